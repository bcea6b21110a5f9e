//! The tunnel envelope and every frame of protocol v1.
//!
//! Field names on the wire are the Rust field names (snake_case); a frame's
//! `type` names its variant. Decoders ignore fields they do not know, and an
//! unknown `type` becomes [`Frame::Unsupported`] so the connection survives.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The `Intent` frame: a payload, the key that signed it and the signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIntent {
    /// Key id of the signing key (see [`crate::key_id`]).
    pub kid: String,
    /// Named-MessagePack bytes of an [`crate::IntentPayload`] (wire type `bin`).
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

/// A signing public key as carried in `Welcome` and the enrollment response.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// Key id ([`crate::key_id`] of the key).
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, 64 lowercase hex characters.
    pub public_key_hex: String,
}

/// One WebSocket binary message: a frame plus sequencing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version number (1 for v1); must match the negotiated one.
    pub v: u16,
    /// Sequence number of this envelope, starting at 1 per direction and connection.
    pub seq: u64,
    /// Highest `seq` received in order from the peer on this connection (0: none yet).
    pub ack: u64,
    /// The frame itself.
    pub body: Frame,
}

impl Envelope {
    /// An envelope of the latest protocol version.
    pub fn new(seq: u64, ack: u64, body: Frame) -> Self {
        Self {
            v: crate::Version::LATEST.number(),
            seq,
            ack,
            body,
        }
    }
}

/// Kind of object an intent or status is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// `apps.vworkspace.io/v1alpha1` ApplicationInstance (namespaced).
    ApplicationInstance,
    /// `ops.vworkspace.io/v1alpha1` Operation (namespaced).
    Operation,
    /// `ops.vworkspace.io/v1alpha1` Cluster (cluster-scoped singleton).
    Cluster,
}

impl ObjectKind {
    /// The kind as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ObjectKind::ApplicationInstance => "ApplicationInstance",
            ObjectKind::Operation => "Operation",
            ObjectKind::Cluster => "Cluster",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one object in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Object kind.
    pub kind: ObjectKind,
    /// Namespace; empty for the cluster-scoped `Cluster`.
    #[serde(default)]
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to a namespaced object.
    pub fn new(kind: ObjectKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Every frame of protocol v1.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Hub → agent: first frame after `Hello`; session parameters.
    Welcome(Welcome),
    /// Hub → agent: a signed intent.
    Intent(SignedIntent),
    /// Hub → agent: asks for a fresh `Inventory` (and statuses that differ).
    ResyncRequest(ResyncRequest),
    /// Hub → agent: answer to `RenewCert`.
    CertIssued(CertIssued),
    /// Either direction, usually hub → agent: the sender is closing.
    Goodbye(Goodbye),
    /// Either direction: a protocol-level error.
    Error(ErrorFrame),
    /// Agent → hub: first frame on a new connection.
    Hello(Hello),
    /// Agent → hub: outcome of one intent.
    IntentAck(IntentAck),
    /// Agent → hub: the current status of one object.
    Status(Status),
    /// Agent → hub: digest of what the agent holds.
    Inventory(Inventory),
    /// Agent → hub: one hash per bucket of the digest, instead of the digest.
    InventorySummary(InventorySummary),
    /// Agent → hub: an audit event.
    Event(Event),
    /// Agent → hub: asks for a new client certificate.
    RenewCert(RenewCert),
    /// A frame whose `type` this build does not know. It is answered with an
    /// `Error{code: "unsupported_frame"}` and never encoded.
    Unsupported {
        /// The `type` string as received.
        type_name: String,
    },
}

impl Frame {
    /// The wire `type` string of this frame.
    pub fn type_name(&self) -> &str {
        match self {
            Frame::Welcome(_) => "welcome",
            Frame::Intent(_) => "intent",
            Frame::ResyncRequest(_) => "resync_request",
            Frame::CertIssued(_) => "cert_issued",
            Frame::Goodbye(_) => "goodbye",
            Frame::Error(_) => "error",
            Frame::Hello(_) => "hello",
            Frame::IntentAck(_) => "intent_ack",
            Frame::Status(_) => "status",
            Frame::Inventory(_) => "inventory",
            Frame::InventorySummary(_) => "inventory_summary",
            Frame::Event(_) => "event",
            Frame::RenewCert(_) => "renew_cert",
            Frame::Unsupported { type_name } => type_name,
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFrameRef<'a> {
    Welcome(&'a Welcome),
    Intent(&'a SignedIntent),
    ResyncRequest(&'a ResyncRequest),
    CertIssued(&'a CertIssued),
    Goodbye(&'a Goodbye),
    Error(&'a ErrorFrame),
    Hello(&'a Hello),
    IntentAck(&'a IntentAck),
    Status(&'a Status),
    Inventory(&'a Inventory),
    InventorySummary(&'a InventorySummary),
    Event(&'a Event),
    RenewCert(&'a RenewCert),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireFrame {
    Welcome(Welcome),
    Intent(SignedIntent),
    ResyncRequest(ResyncRequest),
    CertIssued(CertIssued),
    Goodbye(Goodbye),
    Error(ErrorFrame),
    Hello(Hello),
    IntentAck(IntentAck),
    Status(Status),
    Inventory(Inventory),
    InventorySummary(InventorySummary),
    Event(Event),
    RenewCert(RenewCert),
    #[serde(other)]
    Unknown,
}

impl Serialize for Frame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let w = match self {
            Frame::Welcome(f) => WireFrameRef::Welcome(f),
            Frame::Intent(f) => WireFrameRef::Intent(f),
            Frame::ResyncRequest(f) => WireFrameRef::ResyncRequest(f),
            Frame::CertIssued(f) => WireFrameRef::CertIssued(f),
            Frame::Goodbye(f) => WireFrameRef::Goodbye(f),
            Frame::Error(f) => WireFrameRef::Error(f),
            Frame::Hello(f) => WireFrameRef::Hello(f),
            Frame::IntentAck(f) => WireFrameRef::IntentAck(f),
            Frame::Status(f) => WireFrameRef::Status(f),
            Frame::Inventory(f) => WireFrameRef::Inventory(f),
            Frame::InventorySummary(f) => WireFrameRef::InventorySummary(f),
            Frame::Event(f) => WireFrameRef::Event(f),
            Frame::RenewCert(f) => WireFrameRef::RenewCert(f),
            Frame::Unsupported { type_name } => {
                return Err(serde::ser::Error::custom(format_args!(
                    "frame type {type_name:?} is not supported and cannot be encoded"
                )));
            }
        };
        w.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Frame {
    /// An unknown `type` yields `Unsupported` with an empty `type_name`;
    /// [`crate::decode`] fills the name in.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match WireFrame::deserialize(d)? {
            WireFrame::Welcome(f) => Frame::Welcome(f),
            WireFrame::Intent(f) => Frame::Intent(f),
            WireFrame::ResyncRequest(f) => Frame::ResyncRequest(f),
            WireFrame::CertIssued(f) => Frame::CertIssued(f),
            WireFrame::Goodbye(f) => Frame::Goodbye(f),
            WireFrame::Error(f) => Frame::Error(f),
            WireFrame::Hello(f) => Frame::Hello(f),
            WireFrame::IntentAck(f) => Frame::IntentAck(f),
            WireFrame::Status(f) => Frame::Status(f),
            WireFrame::Inventory(f) => Frame::Inventory(f),
            WireFrame::InventorySummary(f) => Frame::InventorySummary(f),
            WireFrame::Event(f) => Frame::Event(f),
            WireFrame::RenewCert(f) => Frame::RenewCert(f),
            WireFrame::Unknown => Frame::Unsupported {
                type_name: String::new(),
            },
        })
    }
}

/// Hub → agent: session parameters, sent once in answer to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Cluster id the hub bound to this connection (from the client certificate).
    pub cluster_id: String,
    /// Organisation of the cluster.
    pub org: String,
    /// Hub clock, Unix seconds (lets the agent log its own skew).
    pub server_time: i64,
    /// WebSocket ping interval the hub uses, seconds.
    pub heartbeat_secs: u32,
    /// Silence after which either side drops the connection, seconds.
    pub idle_timeout_secs: u32,
    /// Largest envelope either side may send, bytes.
    pub max_frame_bytes: u64,
    /// Intents the hub keeps unacknowledged at most.
    pub max_in_flight: u32,
    /// Current intent-signing public keys (replaces the agent's key ring).
    #[serde(default)]
    pub signing_keys: Vec<PublicKeyInfo>,
    /// Present when the hub serves `POST /v1/recover`: how long after expiry
    /// it still renews a certificate by proof of possession.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_window_secs: Option<u64>,
    /// The CA bundle to trust for the hub from now on (as in the enrollment
    /// answer); sent by hubs that rotate their CA, so an agent that has not
    /// renewed since still learns a new CA before the hub switches to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// Present when the hub assembles chunked `Hello` and `Inventory` frames
    /// (see [`Chunk`]): the most chunks it accepts for one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunks: Option<u32>,
    /// Present when the hub compares bucketed digests (`InventorySummary`):
    /// the most buckets it accepts in one (a power of two, see
    /// [`crate::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_buckets: Option<u32>,
}

/// Position of one frame in a chunked `Hello` or `Inventory`: a list too long
/// for one frame is split into `count` frames sent in `index` order
/// (`0..count`), each under `max_frame_bytes`; the receiver acts on the
/// concatenation once the last one has arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position of this frame, from 0.
    pub index: u32,
    /// Number of frames in the whole; at least 1.
    pub count: u32,
}

impl Chunk {
    /// Whether this is the last frame of its set.
    pub fn is_last(&self) -> bool {
        self.index.saturating_add(1) >= self.count
    }
}

/// Hub → agent: asks for state again. With no `objects`, the agent sends a
/// full `Inventory`; otherwise it sends a `Status` for each listed object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRequest {
    /// Why the hub asks (free text, for logs).
    #[serde(default)]
    pub reason: Option<String>,
    /// Objects whose status the hub wants resent; empty means "send an Inventory".
    #[serde(default)]
    pub objects: Vec<ObjectRef>,
    /// Buckets of the agent's last `InventorySummary` whose entries the hub
    /// wants (strictly ascending); the agent answers with an `Inventory`
    /// naming them in `buckets`. Sent only to an agent that sent a summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u32>,
}

/// Hub → agent: the renewed client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertIssued {
    /// PEM of the new client certificate (leaf first, then intermediates).
    pub certificate_pem: String,
    /// PEM of the CA certificates the agent must trust for the hub (one or two during rotation).
    pub ca_bundle_pem: String,
}

/// The sender is about to close the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why (free text, for logs), e.g. `"hub shutting down"`.
    pub reason: String,
    /// Minimum wait before reconnecting, seconds; the agent adds jitter.
    #[serde(default)]
    pub retry_after_secs: Option<u32>,
}

/// A protocol-level error (not an intent rejection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Stable machine code, see [`crate::ErrorCode`]; unknown codes are kept as strings.
    pub code: String,
    /// Human-readable detail; never contains secrets.
    pub message: String,
}

/// The version of one object the agent has applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedVersion {
    /// The object.
    pub object: ObjectRef,
    /// Highest intent version applied to it.
    pub version: u64,
}

/// Agent → hub: first frame on every connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Agent build version, e.g. `"0.1.0"`.
    pub agent_version: String,
    /// Optional features the agent supports (free-form names).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Every object the agent holds, with the intent version applied to it
    /// (of this chunk, when `chunk` is present).
    #[serde(default)]
    pub applied: Vec<AppliedVersion>,
    /// Intents the agent can take unacknowledged at once; the hub's window is
    /// at most this. Absent: the hub uses its default for older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Present when `applied` is split over several `Hello` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<Chunk>,
    /// `true`: `applied` is left empty on purpose, the versions come in the
    /// entries of the buckets the hub asks for after `InventorySummary`.
    /// Sent only to a hub that announced `digest_buckets` before.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub digest_buckets: bool,
}

/// Outcome of one intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum IntentOutcome {
    /// The intent was written to the cluster.
    Applied,
    /// The cluster already matched; nothing was written.
    Noop,
    /// The intent was refused.
    Rejected {
        /// Stable reason code, see [`crate::RejectionCode`] (e.g. `"bad_signature"`).
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

/// Agent → hub: what happened to one intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentAck {
    /// `intent_id` of the payload; empty when the payload could not be decoded.
    pub intent_id: String,
    /// Envelope `seq` that carried the intent on this connection.
    #[serde(default)]
    pub intent_seq: u64,
    /// The object; absent only when the payload could not be decoded.
    #[serde(default)]
    pub object: Option<ObjectRef>,
    /// The intent version; absent only when the payload could not be decoded.
    #[serde(default)]
    pub version: Option<u64>,
    /// Applied, no-op or rejected.
    pub outcome: IntentOutcome,
}

/// A Kubernetes-style condition (metav1.Condition shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// Condition type, e.g. `"Ready"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: String,
    /// CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Generation the condition was computed for.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    #[serde(default)]
    pub last_transition_time: Option<String>,
}

/// Agent → hub: current status of one object (latest wins).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The object.
    pub object: ObjectRef,
    /// `metadata.generation` of the object.
    pub generation: i64,
    /// `status.observedGeneration`, if the controller has seen it.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Intent version last applied to the object, if known.
    #[serde(default)]
    pub version: Option<u64>,
    /// Phase (Operations and Cluster), e.g. `"Running"`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Outputs (Operation `status.outputs`, endpoints, ...).
    #[serde(default)]
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Opaque digest of this status chosen by the agent; equal hash, equal status.
    pub hash: String,
    /// `true` when the object no longer exists in the cluster.
    #[serde(default)]
    pub deleted: bool,
}

/// One entry of an `Inventory`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    /// The object.
    pub object: ObjectRef,
    /// Intent version applied to it.
    pub version: u64,
    /// `hash` of the last `Status` the agent would send for it.
    pub status_hash: String,
}

/// Agent → hub: digest of everything the agent holds, after reconnect or on
/// `ResyncRequest`. The hub resends newer intents and asks for differing statuses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// One entry per object (of this chunk, when `chunk` is present).
    #[serde(default)]
    pub objects: Vec<InventoryEntry>,
    /// Present when the digest is split over several `Inventory` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<Chunk>,
    /// Present when this digest answers `ResyncRequest{buckets}`: it holds
    /// exactly the entries of these buckets, so an object of one of them
    /// that is missing is gone from the cluster. Absent: the whole digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<u32>>,
}

/// Agent → hub: the digest in buckets (see [`crate::digest`]), sent instead
/// of `Inventory` to a hub that announced `digest_buckets`. The hub asks
/// with `ResyncRequest{buckets}` for the entries of the buckets that differ
/// from its own view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventorySummary {
    /// Number of buckets: a power of two from [`crate::digest::MIN_BUCKETS`]
    /// to the hub's `Welcome::digest_buckets`.
    pub bucket_count: u32,
    /// One 16-byte hash per bucket, in bucket order (wire type `[bin]`).
    #[serde(with = "crate::bytes::list")]
    pub hashes: Vec<Vec<u8>>,
}

/// Agent → hub: an audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened, Unix seconds.
    pub time: i64,
    /// `"Normal"` or `"Warning"` (Kubernetes event types).
    pub severity: String,
    /// CamelCase reason, e.g. `"IntentRejected"`.
    pub reason: String,
    /// Human-readable message; never contains secrets.
    pub message: String,
    /// The object concerned, if any.
    #[serde(default)]
    pub object: Option<ObjectRef>,
    /// The intent concerned, if any.
    #[serde(default)]
    pub intent_id: Option<String>,
}

/// Agent → hub: certificate renewal request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewCert {
    /// PEM PKCS#10 CSR for a freshly generated key.
    pub csr_pem: String,
}
