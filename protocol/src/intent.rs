//! Signed intents: payload, Ed25519 signing, key rings and verification.
//!
//! The signature covers [`INTENT_SIGNING_CONTEXT`] followed by the payload
//! bytes exactly as carried in the frame; receivers verify those bytes and
//! only then decode them, so no canonical re-encoding is ever needed.

use crate::codec::{DecodeError, from_slice, scan};
use crate::frame::{IntentOutcome, ObjectRef};
use crate::limits::Limits;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

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

/// The `Intent` frame: a payload, the key that signed it and the signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIntent {
    /// Key id of the signing key (see [`key_id`]).
    pub kid: String,
    /// Named-MessagePack bytes of an [`IntentPayload`] (wire type `bin`).
    #[serde(with = "crate::bytes")]
    pub payload: Vec<u8>,
    /// Ed25519 signature over `INTENT_SIGNING_CONTEXT || payload` (wire type `bin`).
    #[serde(with = "crate::bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for SignedIntent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedIntent")
            .field("kid", &self.kid)
            .field("payload_len", &self.payload.len())
            .field("signature_len", &self.signature.len())
            .finish()
    }
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

/// Key id of a raw 32-byte Ed25519 public key: the first 16 hex characters
/// (8 bytes) of its SHA-256, lowercase.
pub fn key_id(raw_public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw_public_key);
    hex::encode(&d.as_ref()[..8])
}

/// An Ed25519 public key (raw 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From the raw 32 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, KeyRingError> {
        let a: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeyRingError::BadLength(raw.len()))?;
        Ok(Self(a))
    }

    /// From 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, KeyRingError> {
        let raw = hex::decode(s.trim()).map_err(|_| KeyRingError::BadHex)?;
        Self::from_bytes(&raw)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Key id, see [`key_id`].
    pub fn kid(&self) -> String {
        key_id(&self.0)
    }

    /// The wire description of this key.
    pub fn to_info(&self) -> PublicKeyInfo {
        PublicKeyInfo {
            kid: self.kid(),
            public_key_hex: hex::encode(self.0),
        }
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(kid={})", self.kid())
    }
}

impl TryFrom<&PublicKeyInfo> for PublicKey {
    type Error = KeyRingError;
    /// Parses the key and checks that `kid` matches it.
    fn try_from(info: &PublicKeyInfo) -> Result<Self, KeyRingError> {
        let k = PublicKey::from_hex(&info.public_key_hex)?;
        if k.kid() != info.kid {
            return Err(KeyRingError::KidMismatch {
                claimed: info.kid.clone(),
                actual: k.kid(),
            });
        }
        Ok(k)
    }
}

/// A signing public key as carried in `Welcome` and the enrollment response.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// Key id ([`key_id`] of the key).
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, 64 lowercase hex characters.
    pub public_key_hex: String,
}

/// Why a public key or key ring could not be built.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// The key is not 32 bytes.
    #[error("public key must be 32 bytes, got {0}")]
    BadLength(usize),
    /// The key is not valid hex.
    #[error("public key is not valid hex")]
    BadHex,
    /// The advertised kid does not belong to the key.
    #[error("key id {claimed:?} does not match the key (its id is {actual:?})")]
    KidMismatch {
        /// Kid as advertised.
        claimed: String,
        /// Kid computed from the key.
        actual: String,
    },
}

/// Public keys trusted for intents (and join tokens), by key id. Holding
/// several keys lets the hub rotate: add the new key, sign with it, later
/// drop the old one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, PublicKey>,
}

impl KeyRing {
    /// An empty ring (verifies nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A ring from wire key descriptions; every kid is checked.
    pub fn from_infos<'a>(
        infos: impl IntoIterator<Item = &'a PublicKeyInfo>,
    ) -> Result<Self, KeyRingError> {
        let mut ring = Self::new();
        for info in infos {
            ring.insert(PublicKey::try_from(info)?);
        }
        Ok(ring)
    }

    /// Adds a key; returns its kid.
    pub fn insert(&mut self, key: PublicKey) -> String {
        let kid = key.kid();
        self.keys.insert(kid.clone(), key);
        kid
    }

    /// Removes a key by id.
    pub fn remove(&mut self, kid: &str) -> Option<PublicKey> {
        self.keys.remove(kid)
    }

    /// Looks a key up by id.
    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Wire descriptions of every key, sorted by kid.
    pub fn to_infos(&self) -> Vec<PublicKeyInfo> {
        self.keys.values().map(PublicKey::to_info).collect()
    }

    /// Verifies a signed intent completely; see [`Rejection`] for the checks
    /// and their order.
    pub fn verify(
        &self,
        intent: &SignedIntent,
        ctx: &VerifyContext<'_>,
    ) -> Result<VerifiedIntent, Rejection> {
        if intent.payload.len() > ctx.max_payload_bytes {
            return Err(Rejection::Oversized {
                size: intent.payload.len(),
                max: ctx.max_payload_bytes,
            });
        }
        let key = self.get(&intent.kid).ok_or_else(|| Rejection::UnknownKey {
            kid: intent.kid.clone(),
        })?;
        if intent.signature.len() != SIGNATURE_LEN
            || !key.verify(&intent.signing_input(), &intent.signature)
        {
            return Err(Rejection::BadSignature);
        }
        let payload = decode_payload(&intent.payload, ctx.max_depth)?;
        if payload.cluster_id != ctx.cluster_id {
            return Err(Rejection::ForeignCluster {
                expected: ctx.cluster_id.to_owned(),
                got: payload.cluster_id,
            });
        }
        if let Some(org) = ctx.org
            && org != payload.org
        {
            return Err(Rejection::ForeignOrg {
                cluster: payload.cluster_id,
                expected: org.to_owned(),
                got: payload.org,
            });
        }
        if payload.expires_at < payload.issued_at {
            return Err(Rejection::Malformed(
                "expires_at is before issued_at".into(),
            ));
        }
        let skew = ctx.clock_skew_secs.max(0);
        if ctx.now > payload.expires_at.saturating_add(skew) {
            return Err(Rejection::Expired {
                expires_at: payload.expires_at,
                now: ctx.now,
            });
        }
        if payload.issued_at > ctx.now.saturating_add(skew) {
            return Err(Rejection::NotYetValid {
                issued_at: payload.issued_at,
                now: ctx.now,
            });
        }
        if let Some(applied) = ctx.applied_version
            && payload.version <= applied
        {
            return Err(Rejection::Replayed {
                version: payload.version,
                applied,
            });
        }
        Ok(VerifiedIntent {
            kid: intent.kid.clone(),
            payload,
        })
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

/// Why an intent was refused. Checks run in this order: size, key, signature,
/// payload decoding (and its version), cluster/org, times, replay.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature does not verify with the named key (or is not 64 bytes).
    #[error("signature does not verify")]
    BadSignature,
    /// No trusted key has this id.
    #[error("unknown signing key {kid:?}")]
    UnknownKey {
        /// The kid in the frame.
        kid: String,
    },
    /// The intent names another cluster.
    #[error("intent is for cluster {got:?}, this is {expected:?}")]
    ForeignCluster {
        /// This cluster.
        expected: String,
        /// Cluster in the payload.
        got: String,
    },
    /// The intent names this cluster but another org (code `foreign_cluster`).
    #[error(
        "intent for cluster {cluster:?} names org {got:?}, but this cluster belongs to org {expected:?}"
    )]
    ForeignOrg {
        /// The cluster id (the same in the payload and here).
        cluster: String,
        /// This cluster's org.
        expected: String,
        /// Org in the payload.
        got: String,
    },
    /// `expires_at` plus the skew allowance is in the past.
    #[error("intent expired at {expires_at} (now {now})")]
    Expired {
        /// Payload expiry.
        expires_at: i64,
        /// Receiver clock.
        now: i64,
    },
    /// `issued_at` is further in the future than the skew allowance.
    #[error("intent issued at {issued_at} is in the future (now {now})")]
    NotYetValid {
        /// Payload issue time.
        issued_at: i64,
        /// Receiver clock.
        now: i64,
    },
    /// The version is not newer than the one applied.
    #[error("version {version} is not newer than applied version {applied}")]
    Replayed {
        /// Payload version.
        version: u64,
        /// Version already applied.
        applied: u64,
    },
    /// The payload exceeds the size limit.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Payload size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The payload format version is unknown (above `u16::MAX` reported as `u16::MAX`).
    #[error("unsupported intent payload version {0}")]
    UnsupportedVersion(u16),
    /// The payload is not a valid `IntentPayload`.
    #[error("malformed intent payload: {0}")]
    Malformed(String),
}

impl Rejection {
    /// The stable code for `IntentAck` and metric labels.
    pub fn code(&self) -> RejectionCode {
        match self {
            Rejection::BadSignature => RejectionCode::BadSignature,
            Rejection::UnknownKey { .. } => RejectionCode::UnknownKey,
            Rejection::ForeignCluster { .. } | Rejection::ForeignOrg { .. } => {
                RejectionCode::ForeignCluster
            }
            Rejection::Expired { .. } => RejectionCode::Expired,
            Rejection::NotYetValid { .. } => RejectionCode::NotYetValid,
            Rejection::Replayed { .. } => RejectionCode::Replayed,
            Rejection::Oversized { .. } => RejectionCode::Oversized,
            Rejection::UnsupportedVersion(_) => RejectionCode::UnsupportedVersion,
            Rejection::Malformed(_) => RejectionCode::Malformed,
        }
    }

    /// The `IntentAck` outcome reporting this rejection.
    pub fn to_outcome(&self) -> IntentOutcome {
        IntentOutcome::Rejected {
            code: self.code().as_str().to_owned(),
            message: self.to_string(),
        }
    }
}

/// Stable rejection codes (wire strings and metric label values).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectionCode {
    /// `bad_signature`
    BadSignature,
    /// `unknown_key`
    UnknownKey,
    /// `foreign_cluster`
    ForeignCluster,
    /// `expired`
    Expired,
    /// `not_yet_valid`
    NotYetValid,
    /// `replayed`
    Replayed,
    /// `oversized`
    Oversized,
    /// `unsupported_version`
    UnsupportedVersion,
    /// `malformed`
    Malformed,
    /// `invalid_spec`: verified, but the spec is not acceptable for the kind.
    InvalidSpec,
    /// `forbidden`: verified, but the agent may not act there (e.g. namespace not granted).
    Forbidden,
    /// `apply_failed`: verified, but writing it failed; the hub may resend later.
    ApplyFailed,
}

impl RejectionCode {
    /// Every code, for documentation, metrics and tests.
    pub const ALL: &'static [RejectionCode] = &[
        RejectionCode::BadSignature,
        RejectionCode::UnknownKey,
        RejectionCode::ForeignCluster,
        RejectionCode::Expired,
        RejectionCode::NotYetValid,
        RejectionCode::Replayed,
        RejectionCode::Oversized,
        RejectionCode::UnsupportedVersion,
        RejectionCode::Malformed,
        RejectionCode::InvalidSpec,
        RejectionCode::Forbidden,
        RejectionCode::ApplyFailed,
    ];

    /// The code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionCode::BadSignature => "bad_signature",
            RejectionCode::UnknownKey => "unknown_key",
            RejectionCode::ForeignCluster => "foreign_cluster",
            RejectionCode::Expired => "expired",
            RejectionCode::NotYetValid => "not_yet_valid",
            RejectionCode::Replayed => "replayed",
            RejectionCode::Oversized => "oversized",
            RejectionCode::UnsupportedVersion => "unsupported_version",
            RejectionCode::Malformed => "malformed",
            RejectionCode::InvalidSpec => "invalid_spec",
            RejectionCode::Forbidden => "forbidden",
            RejectionCode::ApplyFailed => "apply_failed",
        }
    }

    /// Parses a wire code; `None` for codes this build does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for RejectionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an intent could not be signed, or a signing key loaded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The private key bytes were rejected.
    #[error("invalid Ed25519 private key: {0}")]
    InvalidKey(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// The payload could not be encoded.
    #[error("intent payload cannot be encoded: {0}")]
    Encode(String),
}

/// The hub's intent-signing key (private). `Debug` shows only the kid.
pub struct IntentSigner {
    pair: Ed25519KeyPair,
    kid: String,
}

impl fmt::Debug for IntentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntentSigner(kid={})", self.kid)
    }
}

impl IntentSigner {
    /// Generates a new key; returns it with its PKCS#8 v2 document to store.
    pub fn generate() -> Result<(Self, Vec<u8>), SignError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SignError::Random)?;
        let signer = Self::from_pkcs8(doc.as_ref())?;
        Ok((signer, doc.as_ref().to_vec()))
    }

    /// Loads a key from PKCS#8 (v1 or v2) DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// Loads a key from its 32-byte seed (used for deterministic test vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let kid = key_id(pair.public_key().as_ref());
        Self { pair, kid }
    }

    /// Key id of this key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(a)
    }

    /// Encodes the payload (named MessagePack) and signs it.
    pub fn sign(&self, payload: &IntentPayload) -> Result<SignedIntent, SignError> {
        let bytes =
            rmp_serde::to_vec_named(payload).map_err(|e| SignError::Encode(e.to_string()))?;
        Ok(self.sign_bytes(bytes))
    }

    /// Signs payload bytes as they are (no check that they decode).
    pub fn sign_bytes(&self, payload: Vec<u8>) -> SignedIntent {
        let signature = self.pair.sign(&signing_input(&payload)).as_ref().to_vec();
        SignedIntent {
            kid: self.kid.clone(),
            payload,
            signature,
        }
    }
}

/// PKCS#8 v1 DER document wrapping a raw 32-byte Ed25519 seed (RFC 8410).
pub fn pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut v = PREFIX.to_vec();
    v.extend_from_slice(seed);
    v
}
