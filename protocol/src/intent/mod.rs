//! Signed intents: payload, Ed25519 signing, key rings and verification.
//!
//! The signature covers [`INTENT_SIGNING_CONTEXT`] followed by the payload
//! bytes exactly as carried in the frame; receivers verify those bytes and
//! only then decode them, so no canonical re-encoding is ever needed.

mod keys;
mod rejection;

pub use crate::frame::{PublicKeyInfo, SignedIntent};
pub use keys::{
    IntentSigner, KeyRing, KeyRingError, PublicKey, SignError, key_id, pkcs8_from_seed,
};
pub use rejection::{Rejection, RejectionCode};

use crate::codec::{DecodeError, from_slice, scan};
use crate::frame::ObjectRef;
use crate::limits::Limits;
use serde::{Deserialize, Serialize};

/// Domain-separation prefix of the intent signing input.
pub const INTENT_SIGNING_CONTEXT: &[u8] = b"vworkspace/intent/v1\0";

/// Version of the [`IntentPayload`] format (its `v` field).
pub const INTENT_PAYLOAD_VERSION: u16 = 1;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// What the hub wants done to one object. Signed as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentPayload {
    /// Payload format version ([`INTENT_PAYLOAD_VERSION`]).
    pub v: u16,
    /// Unique id of this intent (UUID string).
    pub intent_id: String,
    /// Cluster the intent is for.
    pub cluster_id: String,
    /// Organisation the cluster belongs to.
    pub org: String,
    /// Issue time, Unix seconds.
    pub issued_at: i64,
    /// Expiry time, Unix seconds.
    pub expires_at: i64,
    /// The object.
    pub object: ObjectRef,
    /// Per-object version; each new intent for the object has a higher one.
    pub version: u64,
    /// Apply or delete.
    pub action: IntentAction,
}

/// The action of an intent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IntentAction {
    /// Create or update the object with this spec (JSON-like, as in the CRD).
    Apply {
        /// The object's `spec`.
        spec: serde_json::Value,
    },
    /// Delete the object.
    Delete,
}

impl SignedIntent {
    /// The exact bytes the signature covers.
    pub fn signing_input(&self) -> Vec<u8> {
        signing_input(&self.payload)
    }

    /// Decodes the payload WITHOUT checking the signature, e.g. to fill an
    /// `IntentAck` for an intent that failed verification. Never act on it.
    pub fn peek_payload(&self) -> Result<IntentPayload, Rejection> {
        decode_payload(&self.payload, crate::limits::MAX_DEPTH)
    }
}

fn signing_input(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(INTENT_SIGNING_CONTEXT.len() + payload.len());
    m.extend_from_slice(INTENT_SIGNING_CONTEXT);
    m.extend_from_slice(payload);
    m
}

fn decode_payload(bytes: &[u8], max_depth: usize) -> Result<IntentPayload, Rejection> {
    #[derive(Deserialize)]
    struct V {
        v: u64,
    }
    let malformed = |e: DecodeError| Rejection::Malformed(e.to_string());
    scan(bytes, max_depth).map_err(malformed)?;
    match from_slice::<IntentPayload>(bytes, max_depth) {
        Ok(p) if p.v != INTENT_PAYLOAD_VERSION => Err(Rejection::UnsupportedVersion(p.v)),
        Ok(p) => Ok(p),
        Err(e) => match from_slice::<V>(bytes, max_depth) {
            Ok(V { v }) if v != u64::from(INTENT_PAYLOAD_VERSION) => Err(
                Rejection::UnsupportedVersion(u16::try_from(v).unwrap_or(u16::MAX)),
            ),
            _ => Err(malformed(e)),
        },
    }
}

/// What the receiver knows when it verifies an intent.
#[derive(Clone, Debug)]
pub struct VerifyContext<'a> {
    /// This cluster's id (from enrollment).
    pub cluster_id: &'a str,
    /// This cluster's org; checked when set.
    pub org: Option<&'a str>,
    /// Current time, Unix seconds.
    pub now: i64,
    /// Clock skew allowance, seconds.
    pub clock_skew_secs: i64,
    /// Version already applied to the intent's object, if any.
    pub applied_version: Option<u64>,
    /// Largest payload accepted, bytes.
    pub max_payload_bytes: usize,
    /// Maximum nesting depth of the payload.
    pub max_depth: usize,
}

impl<'a> VerifyContext<'a> {
    /// A context with default limits and no applied version.
    pub fn new(cluster_id: &'a str, now: i64) -> Self {
        let l = Limits::default();
        Self {
            cluster_id,
            org: None,
            now,
            clock_skew_secs: l.clock_skew_secs,
            applied_version: None,
            max_payload_bytes: l.max_intent_payload_bytes,
            max_depth: l.max_depth,
        }
    }

    /// Also require this org.
    pub fn with_org(mut self, org: &'a str) -> Self {
        self.org = Some(org);
        self
    }

    /// The version already applied to the object the intent names.
    pub fn with_applied_version(mut self, v: Option<u64>) -> Self {
        self.applied_version = v;
        self
    }

    /// Takes skew, payload size and depth limits from `limits`.
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.clock_skew_secs = limits.clock_skew_secs;
        self.max_payload_bytes = limits.max_intent_payload_bytes;
        self.max_depth = limits.max_depth;
        self
    }
}

/// An intent whose signature, cluster, times and version all checked out.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedIntent {
    /// Key id that signed it.
    pub kid: String,
    /// The payload.
    pub payload: IntentPayload,
}
