//! Wire protocol v1 between the vWorkspace hub and the cluster agent.
//!
//! This crate holds the wire types and the rules that both ends must agree on:
//! the tunnel [`Envelope`] and every [`Frame`], the MessagePack codec with its
//! size limits, signed intents (Ed25519 over a domain-separated payload),
//! signing-key rings, join tokens (EdDSA JWT) and the enrollment HTTP bodies.
//! It does no I/O and holds no connection policy; `docs/protocol.md` is the
//! normative specification and `protocol/vectors/` the test vectors.
#![deny(rust_2018_idioms, missing_docs)]
#![forbid(unsafe_code)]

mod bytes;
pub mod chunk;
pub mod codec;
pub mod digest;
pub mod enrollment;
pub mod frame;
pub mod intent;
pub mod join_token;
mod jwt_crypto;
pub mod limits;
pub mod recovery;
pub mod untrusted;
pub mod version;

pub use codec::{DecodeError, EncodeError, ErrorCode, decode, encode};
pub use frame::{
    AppliedVersion, CertIssued, Chunk, Condition, Envelope, ErrorFrame, Event, Frame, Goodbye,
    Hello, IntentAck, IntentOutcome, Inventory, InventoryEntry, InventorySummary, ObjectKind,
    ObjectRef, RenewCert, ResyncRequest, Status, Welcome,
};
pub use intent::{
    INTENT_SIGNING_CONTEXT, IntentAction, IntentPayload, IntentSigner, KeyRing, KeyRingError,
    PublicKey, PublicKeyInfo, Rejection, RejectionCode, SignError, SignedIntent, VerifiedIntent,
    VerifyContext, key_id,
};
pub use join_token::{
    JOIN_TOKEN_AUDIENCE, JoinClaims, JoinToken, JoinTokenError, JoinTokenIssuer, ca_sha256_hex,
    verify_join_token,
};
pub use jwt_crypto::install_jwt_crypto;
pub use limits::Limits;
pub use version::{SUBPROTOCOL_V1, TUNNEL_PATH, Version, negotiate};

/// Current time as Unix seconds, the clock every `now` parameter expects.
pub fn unix_now() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
