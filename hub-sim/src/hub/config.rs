//! What `hub-sim serve` can be told, with the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `hub-sim serve` can be told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the database, admin token and CA copy live.
    pub state_dir: PathBuf,
    /// TLS listener for `POST /v1/enroll` and `GET /v1/tunnel`.
    pub listen: SocketAddr,
    /// Admin HTTP API listener (loopback only).
    pub admin_listen: SocketAddr,
    /// Hub URL written into join tokens; defaults to `https://<listen>`.
    pub public_url: Option<String>,
    /// DNS names / IPs on the server certificate.
    pub server_names: Vec<String>,
    /// Lifetime of issued client certificates.
    pub client_cert_lifetime: Duration,
    /// Default join-token lifetime (capped at 24 h).
    pub token_ttl: Duration,
    /// Lifetime of a signed intent, counted from when it is sent.
    pub intent_ttl: Duration,
    /// Maximum concurrent TLS connections (enrollment + tunnels).
    pub max_connections: usize,
    /// Most intents sent but not yet acked per tunnel: the window granted is
    /// the smaller of this and the agent's `Hello.max_in_flight` (32 for an
    /// agent that offers none).
    pub window: usize,
    /// Most buckets of an `InventorySummary` the hub compares, announced in
    /// `Welcome.digest_buckets`; below 16 the hub does not announce it and
    /// agents send the whole `Inventory` after every reconnect.
    pub digest_buckets: u32,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// Drop a tunnel that sent nothing for this long.
    pub idle_timeout: Duration,
    /// `Goodbye.retry_after` sent on shutdown.
    pub shutdown_retry_after: Duration,
    /// TLS + HTTP handshake deadline.
    pub handshake_timeout: Duration,
    /// Whole-request deadline on the TLS listener (headers and body, every
    /// request before a tunnel upgrade): a client that trickles bytes is cut.
    pub request_timeout: Duration,
    /// Of `max_connections`, how many may be unauthenticated at once (TLS
    /// handshake in progress, or no client certificate, i.e. enrollment);
    /// beyond it the oldest is closed, so they cannot keep agents out.
    pub max_unauthenticated: usize,
    /// Enrollment rate limits (per peer address and overall).
    pub enroll_rate: crate::ratelimit::RateLimits,
    /// What one cluster may make the hub store.
    pub storage: StorageLimits,
    /// How long after expiry a certificate may be recovered (`/v1/recover`); zero: never.
    pub recovery_window: Duration,
    /// Added to the `server_time` announced in `Welcome` (clock-skew simulation).
    pub clock_offset_secs: i64,
}

/// Bounds on what one enrolled agent can make the hub store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageLimits {
    /// Largest stored status (conditions + outputs as JSON), bytes.
    pub max_status_bytes: usize,
    /// Statuses kept for objects the hub never declared (the Cluster object
    /// and objects the agent found on its own), per cluster.
    pub max_unknown_objects: usize,
    /// Agent-sent events kept per cluster (oldest dropped first).
    pub max_events: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_status_bytes: 64 * 1024,
            max_unknown_objects: 100,
            max_events: 1000,
        }
    }
}

impl Config {
    /// Defaults for a state dir; listeners on loopback ports 8443 / 8080.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            client_cert_lifetime: Duration::from_secs(24 * 3600),
            token_ttl: Duration::from_secs(3600),
            intent_ttl: Duration::from_secs(600),
            max_connections: 10_000,
            window: 1024,
            digest_buckets: vworkspace_protocol::digest::MAX_BUCKETS,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            shutdown_retry_after: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_unauthenticated: 1024,
            enroll_rate: crate::ratelimit::RateLimits::default(),
            storage: StorageLimits::default(),
            recovery_window: Duration::from_secs(
                vworkspace_protocol::recovery::DEFAULT_RECOVERY_WINDOW_SECS,
            ),
            clock_offset_secs: 0,
        }
    }

    /// Same, with both listeners on ephemeral loopback ports (tests).
    pub fn ephemeral(state_dir: impl Into<PathBuf>) -> Self {
        let mut c = Self::new(state_dir);
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }
}
