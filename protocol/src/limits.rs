//! Size, count and time limits shared by both ends of the tunnel.

/// Default maximum size of one encoded envelope (1 MiB).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Default maximum size of a signed intent payload; leaves room for the
/// envelope, key id and signature inside [`MAX_FRAME_BYTES`].
pub const MAX_INTENT_PAYLOAD_BYTES: usize = 1024 * 1024 - 4096;
/// Default number of intents the hub may send before it sees their acks.
pub const MAX_IN_FLIGHT: u32 = 64;
/// Largest intent window an agent offers in `Hello` (and the most a hub grants).
pub const MAX_IN_FLIGHT_OFFER: u32 = 1024;
/// Default most chunks a hub accepts for one chunked `Hello` or `Inventory`.
pub const MAX_CHUNKS: u32 = 16;
/// Default most entries a hub accepts in one assembled `Hello` or `Inventory`.
pub const MAX_CHUNKED_ENTRIES: usize = 200_000;
/// Default time a hub allows from the first to the last chunk of a set, seconds.
pub const CHUNK_TIMEOUT_SECS: u64 = 60;
/// Default WebSocket ping interval, seconds.
pub const HEARTBEAT_SECS: u32 = 20;
/// Default silence after which a peer is dropped, seconds.
pub const IDLE_TIMEOUT_SECS: u32 = 60;
/// Largest heartbeat interval an agent accepts from a `Welcome`, seconds.
pub const MAX_HEARTBEAT_SECS: u32 = 300;
/// Default allowance for clock differences when checking times, seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Maximum nesting depth of a decoded frame (guards the stack).
pub const MAX_DEPTH: usize = 64;

/// Limits in effect on one connection.
///
/// The hub announces its values in `Welcome`; both sides enforce them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest encoded envelope accepted or sent, bytes.
    pub max_frame_bytes: usize,
    /// Largest signed intent payload, bytes.
    pub max_intent_payload_bytes: usize,
    /// Intents the hub may have unacknowledged at once.
    pub max_in_flight: u32,
    /// Ping interval, seconds.
    pub heartbeat_secs: u32,
    /// Silence after which the peer is dropped, seconds.
    pub idle_timeout_secs: u32,
    /// Largest heartbeat interval accepted from a peer, seconds.
    pub max_heartbeat_secs: u32,
    /// Clock skew allowance for intent and token times, seconds.
    pub clock_skew_secs: i64,
    /// Maximum nesting depth of a decoded frame.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_intent_payload_bytes: MAX_INTENT_PAYLOAD_BYTES,
            max_in_flight: MAX_IN_FLIGHT,
            heartbeat_secs: HEARTBEAT_SECS,
            idle_timeout_secs: IDLE_TIMEOUT_SECS,
            max_heartbeat_secs: MAX_HEARTBEAT_SECS,
            clock_skew_secs: CLOCK_SKEW_SECS,
            max_depth: MAX_DEPTH,
        }
    }
}

impl Limits {
    /// Returns a copy with another maximum frame size.
    pub fn with_max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// Returns a copy with another maximum intent payload size.
    pub fn with_max_intent_payload_bytes(mut self, n: usize) -> Self {
        self.max_intent_payload_bytes = n;
        self
    }

    /// Returns a copy with another in-flight window.
    pub fn with_max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Returns a copy with other heartbeat and idle timeouts.
    pub fn with_heartbeat(mut self, heartbeat_secs: u32, idle_timeout_secs: u32) -> Self {
        self.heartbeat_secs = heartbeat_secs;
        self.idle_timeout_secs = idle_timeout_secs;
        self
    }

    /// Returns a copy with another clock skew allowance.
    pub fn with_clock_skew_secs(mut self, secs: i64) -> Self {
        self.clock_skew_secs = secs;
        self
    }
}
