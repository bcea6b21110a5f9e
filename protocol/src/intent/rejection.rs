//! Why an intent was refused, and the stable codes that go on the wire in
//! an `IntentAck`.

use std::fmt;

use crate::frame::IntentOutcome;

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
