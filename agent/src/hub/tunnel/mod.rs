//! The tunnel client: one mutual-TLS WebSocket to the hub at a time.
//!
//! The supervisor (this file) waits for credentials, connects, and after the
//! connection ends waits an exponentially growing, fully jittered delay (or
//! the hub's `Goodbye.retry_after` plus jitter) before the next attempt.
//! Credentials are re-read from their Secret on every attempt, so a renewal or
//! a new enrollment is used without a restart.
//!
//! One connection: [`tls`] builds the client configuration, [`handshake`]
//! opens it up to `Welcome`, [`session`] drives it (incoming frames, acks and
//! statuses going out, pings, the idle timeout), [`scheduler`] applies the
//! intents, [`renewal`] renews the client certificate, and [`conn`] frames
//! every message.

mod conn;
mod handshake;
mod renewal;
mod scheduler;
mod session;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{DecodeError, EncodeError, ErrorFrame, Goodbye};

use crate::controllers::namespaces::NamespaceGate;
use crate::hub::cluster_status::ClusterStatusWriter;
use crate::hub::creds::{Credentials, CredsError};
use crate::hub::metrics::Metrics;
use crate::hub::status::Outbox;
use crate::hub::tombstones::Tombstones;
use crate::process::logging::Redactor;

pub use handshake::applied_versions;
pub use tls::TlsConfigError;
pub(crate) use tls::server_ca_unknown;

/// Where the tunnel stands, for probes, metrics and `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Not the leader; another replica holds the tunnel.
    Standby,
    /// No credentials yet (enrollment has not completed).
    WaitingForCredentials,
    /// Connecting.
    Connecting,
    /// `Welcome` received; the tunnel is up.
    Connected,
    /// The last attempt failed or the connection ended.
    Disconnected,
}

// === impl ConnState ===

impl ConnState {
    /// Gauge value: 1 connected, -1 disconnected, 0 otherwise.
    pub fn gauge(self) -> i64 {
        match self {
            ConnState::Connected => 1,
            ConnState::Disconnected => -1,
            _ => 0,
        }
    }
}

/// Why a connection ended or could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// No usable credentials.
    #[error(transparent)]
    Creds(#[from] CredsError),
    /// TLS configuration could not be built from the credentials.
    #[error("TLS configuration from the credentials Secret: {0}")]
    TlsConfig(#[from] TlsConfigError),
    /// The hub's server certificate does not chain to a CA of the bundle:
    /// the hub CA was rotated while this cluster was away.
    #[error("the hub's server certificate comes from a CA this cluster does not trust: {0}")]
    HubCaUnknown(String),
    /// The hub refused this identity (HTTP 401/403 or a TLS alert).
    #[error("the hub refused this agent's identity: {0}")]
    Rejected(String),
    /// The tunnel URL is not a valid WebSocket URL.
    #[error("tunnel connection failed: tunnel URL {url}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why it was refused.
        #[source]
        source: tungstenite::Error,
    },
    /// TCP, TLS and the WebSocket upgrade took too long.
    #[error("tunnel connection failed: handshake timed out")]
    HandshakeTimeout,
    /// The hub answered the upgrade with an HTTP error other than 401/403.
    #[error("tunnel connection failed: HTTP {0} on the tunnel upgrade")]
    UpgradeStatus(http::StatusCode),
    /// Network, TLS or WebSocket failure.
    #[error("tunnel connection failed: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The hub closed the connection before `Welcome`.
    #[error("tunnel connection failed: the hub closed before Welcome")]
    ClosedBeforeWelcome,
    /// The hub said goodbye before `Welcome` (its reason, cut).
    #[error("tunnel connection failed: the hub said goodbye before Welcome: {0}")]
    GoodbyeBeforeWelcome(String),
    /// A frame of ours could not be encoded (too large); nothing was sent.
    #[error("frame not sent: {0}")]
    Encode(#[from] EncodeError),
    /// A frame from the hub could not be decoded.
    #[error("protocol error: undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] Violation),
    /// Nothing was heard from the hub for the idle timeout.
    #[error("the hub was silent for {0:?}")]
    Idle(Duration),
    /// Reading the applied versions from the cluster failed.
    #[error("reading applied versions: {0}")]
    Kube(#[from] kube::Error),
    /// The client certificate expired; enrollment recovers it (`hub::recovery`).
    #[error(
        "the client certificate expired; waiting for its recovery (see the Authenticated condition)"
    )]
    CertificateExpired,
}

/// How the hub broke the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The upgrade selected another subprotocol (or none).
    #[error("the hub selected subprotocol {0:?}, expected {SUBPROTOCOL_V1}", SUBPROTOCOL_V1 = vworkspace_protocol::SUBPROTOCOL_V1)]
    Subprotocol(Option<String>),
    /// No `Welcome` within the handshake timeout.
    #[error("no Welcome from the hub")]
    NoWelcome,
    /// The first frame was not `Welcome`.
    #[error("expected welcome, got {0}")]
    NotWelcome(String),
    /// `Welcome` names another cluster than the credentials.
    #[error(
        "the hub bound this connection to cluster {bound:?}, the credentials are for {credentials:?}"
    )]
    WrongCluster {
        /// Cluster id in `Welcome`.
        bound: String,
        /// Cluster id of the credentials.
        credentials: String,
    },
    /// A frame larger than `max_frame_bytes`.
    #[error("the hub sent an oversized frame")]
    OversizedFrame,
    /// A WebSocket text frame.
    #[error("the hub sent a text frame")]
    TextFrame,
    /// A gap or repeat in the hub's sequence numbers.
    #[error("expected seq {expected}, got {got}")]
    Sequence {
        /// The next seq.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// An ack of a seq the agent never sent.
    #[error("ack {0} names an unsent seq")]
    AckUnsent(u64),
    /// More intents in flight than `max_in_flight`.
    #[error("the hub exceeded max_in_flight")]
    TooManyInFlight,
    /// A frame only the agent sends.
    #[error("{0} is an agent-to-hub frame")]
    AgentFrame(String),
    /// A bucket request that does not fit the summary sent.
    #[error("digest_error: {0}")]
    Digest(#[from] vworkspace_protocol::digest::DigestError),
    /// The hub reported a fatal error (code and message, escaped).
    #[error("{code}: {message}")]
    HubError {
        /// The hub's error code.
        code: String,
        /// The hub's message.
        message: String,
    },
}

/// How a connection that was up ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    IdentityChanged,
    Goodbye(String, Option<Duration>),
    Closed,
}

/// Everything the tunnel needs.
#[derive(Clone)]
pub struct Tunnel {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Agent namespace (credentials Secret).
    pub namespace: String,
    /// Credentials Secret name.
    pub credentials_secret: String,
    /// Tunnel URL override.
    pub hub_endpoint: Option<String>,
    /// The namespace gate intents must pass.
    pub gate: NamespaceGate,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// Metrics.
    pub metrics: Metrics,
    /// Statuses waiting to go to the hub.
    pub outbox: Outbox,
    /// Cluster status writer.
    pub cluster_status: ClusterStatusWriter,
    /// Publishes the connection state.
    pub state: watch::Sender<ConnState>,
    /// Current identity, from enrollment.
    pub creds: watch::Receiver<Option<Arc<Credentials>>>,
    /// Secrets to keep out of logs.
    pub redactor: Redactor,
    /// Versions of deleted objects.
    pub tombstones: Tombstones,
    /// Whether applied ApplicationInstances carry their finalizer (only
    /// when the controllers that remove it run).
    pub finalize_instances: bool,
    /// Hubs that announced bucketed digests to this process.
    pub digest_hubs: DigestHubs,
}

/// Tunnel URLs whose hub announced `Welcome.digest_buckets` in this process.
/// Only to those is `Hello` sent without `applied` (docs/protocol.md §9): a
/// hub must have said it reads versions from bucket inventories first.
/// Kept in memory only, so every agent start begins with a full `Hello`.
#[derive(Clone, Debug, Default)]
pub struct DigestHubs(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl DigestHubs {
    /// Whether the hub at `url` announced bucketed digests before.
    pub fn knows(&self, url: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(url)
    }

    /// Records what the hub at `url` announced in its latest `Welcome`.
    pub fn record(&self, url: &str, supports: bool) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if supports {
            s.insert(url.to_owned());
        } else {
            s.remove(url);
        }
    }
}

fn set_state(tx: &watch::Sender<ConnState>, metrics: &Metrics, s: ConnState) {
    metrics.connection_state.set(s.gauge());
    tx.send_replace(s);
}

// === impl Tunnel ===

impl Tunnel {
    /// Runs the supervisor until `shutdown` is cancelled. Every task it
    /// started has finished when it returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        self.supervise(&shutdown, &tasks).await;
        tasks.close();
        tasks.wait().await;
    }

    async fn supervise(&mut self, shutdown: &CancellationToken, tasks: &TaskTracker) {
        let mut attempt: u32 = 0;
        loop {
            if self.creds.borrow_and_update().is_none() {
                set_state(&self.state, &self.metrics, ConnState::WaitingForCredentials);
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    r = self.creds.changed() => if r.is_err() { return },
                }
                continue;
            }
            set_state(&self.state, &self.metrics, ConnState::Connecting);
            let was_up = AtomicBool::new(false);
            let mut ca_unknown = false;
            let mut expired = false;
            let result = self.connect_once(shutdown, tasks, &was_up).await;
            if was_up.load(Ordering::Relaxed) {
                attempt = 0;
            }
            let (delay, message, rejected) = match result {
                Ok(Ended::Shutdown) => {
                    set_state(&self.state, &self.metrics, ConnState::Disconnected);
                    let _ = self
                        .cluster_status
                        .disconnected("the agent is shutting down", false)
                        .await;
                    return;
                }
                Ok(Ended::IdentityChanged) => {
                    tracing::info!("Credentials changed; reconnecting");
                    (
                        Duration::ZERO,
                        "reconnecting with new credentials".to_owned(),
                        false,
                    )
                }
                Ok(Ended::Goodbye(reason, Some(retry_after))) => {
                    let d = crate::hub::backoff::after_goodbye(retry_after, self.backoff_max);
                    tracing::info!(%reason, ?retry_after, delay = ?d, "Hub said goodbye");
                    (d, format!("the hub closed the tunnel: {reason}"), false)
                }
                Ok(Ended::Goodbye(reason, None)) => {
                    attempt += 1;
                    let d = crate::hub::backoff::full_jitter(
                        self.backoff_min,
                        self.backoff_max,
                        attempt,
                    );
                    tracing::info!(%reason, delay = ?d, "Hub said goodbye");
                    (d, format!("the hub closed the tunnel: {reason}"), false)
                }
                Ok(Ended::Closed) => {
                    attempt += 1;
                    let d = crate::hub::backoff::full_jitter(
                        self.backoff_min,
                        self.backoff_max,
                        attempt,
                    );
                    tracing::info!(delay = ?d, "Tunnel closed by the hub");
                    (d, "the tunnel was closed".to_owned(), false)
                }
                Err(error) => {
                    attempt += 1;
                    let d = crate::hub::backoff::full_jitter(
                        self.backoff_min,
                        self.backoff_max,
                        attempt,
                    );
                    let rejected = matches!(error, TunnelError::Rejected(_));
                    tracing::warn!(%error, attempt, delay = ?d, "Tunnel connection failed");
                    ca_unknown = matches!(error, TunnelError::HubCaUnknown(_));
                    expired = matches!(error, TunnelError::CertificateExpired);
                    (d, error.to_string(), rejected)
                }
            };
            set_state(&self.state, &self.metrics, ConnState::Disconnected);
            let creds = self.creds.borrow().clone();
            let written = match creds {
                Some(c) if ca_unknown => {
                    self.cluster_status
                        .hub_ca_unknown(&hub_ca_unknown_message(&c))
                        .await
                }
                _ => {
                    self.cluster_status
                        .disconnected_with(&message, rejected, expired)
                        .await
                }
            };
            if let Err(error) = written {
                tracing::warn!(%error, "Failed to update the Cluster status");
            }
            self.metrics.reconnects.inc();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                r = self.creds.changed() => if r.is_err() { return },
            }
        }
    }
}

/// What the Cluster says when the hub's server certificate comes from an
/// unknown CA: the cause and the operator's way back (docs/operations.md,
/// "Rotating the hub CA").
pub(crate) fn hub_ca_unknown_message(c: &Credentials) -> String {
    format!(
        "the hub's server certificate comes from a CA that is not in this cluster's CA bundle: the hub CA was rotated (rotate-ca retire) while the cluster was offline. Retrying with backoff; to bring the cluster back, issue a new join token at the hub (it pins the new CA; hub-sim: `hub-sim token create --cluster {} --org {}`) and put it into the Secret named by spec.registrationTokenSecretRef",
        c.cluster_id, c.org
    )
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Cluster status writes happen off the tunnel loop so a slow API server
/// cannot stall the connection; each is one short request, tracked so the
/// supervisor waits for it before it returns.
fn spawn_status_write(tasks: &TaskTracker, w: ClusterStatusWriter, connected: bool) {
    tasks.spawn(async move {
        let r = if connected {
            w.connected().await
        } else {
            w.heartbeat().await
        };
        if let Err(error) = r {
            tracing::warn!(%error, "Failed to update the Cluster status");
        }
    });
}

/// How a session ends on the hub's `Goodbye`. The reason is the hub's text:
/// it goes to the log and the Cluster status escaped and cut.
fn ended_by_goodbye(g: Goodbye) -> Ended {
    Ended::Goodbye(
        escape(&g.reason, 200),
        g.retry_after_secs
            .map(|s| Duration::from_secs(u64::from(s))),
    )
}

/// Code and message of the hub's `Error` frame, escaped and cut for logs.
fn hub_error_text(e: ErrorFrame) -> (String, String) {
    (escape(&e.code, 64), escape(&e.message, 200))
}

#[cfg(test)]
mod tests {
    use super::handshake::limits_from;
    use super::renewal::renewal_time;
    use super::scheduler::rejection_event;
    use super::*;
    use vworkspace_protocol::{IntentAck, IntentOutcome, Limits, ObjectKind, ObjectRef, Welcome};

    fn welcome(heartbeat: u32, idle: u32, frame: u64, in_flight: u32) -> Welcome {
        Welcome {
            cluster_id: "c".into(),
            org: "o".into(),
            server_time: 0,
            heartbeat_secs: heartbeat,
            idle_timeout_secs: idle,
            max_frame_bytes: frame,
            max_in_flight: in_flight,
            recovery_window_secs: None,
            ca_bundle_pem: None,
            max_chunks: None,
            signing_keys: Vec::new(),
            digest_buckets: None,
        }
    }

    #[test]
    fn a_summary_hello_goes_only_to_a_hub_url_that_announced_digests_last_time() {
        let hubs = DigestHubs::default();
        let url = "wss://hub.example:8443/v1/tunnel";
        assert!(!hubs.knows(url), "a new process starts with full hellos");
        hubs.record(url, true);
        assert!(hubs.knows(url));
        assert!(!hubs.knows("wss://other.example/v1/tunnel"));
        // The hub stopped announcing them (downgraded): full hellos again.
        hubs.record(url, false);
        assert!(!hubs.knows(url));
    }

    #[test]
    fn welcome_limits_are_clamped_to_what_the_agent_accepts() {
        let l = limits_from(&welcome(20, 60, 1 << 20, 32));
        assert_eq!((l.heartbeat_secs, l.idle_timeout_secs), (20, 60));
        assert_eq!(l.max_in_flight, 32);
        // A hub asking for a silly heartbeat, a tiny idle timeout or huge frames is clamped.
        let l = limits_from(&welcome(0, 0, u64::MAX, 0));
        assert_eq!(l.heartbeat_secs, 1);
        assert!(l.idle_timeout_secs >= 2 * l.heartbeat_secs);
        assert_eq!(l.max_frame_bytes, Limits::default().max_frame_bytes);
        assert_eq!(l.max_in_flight, 1);
        let l = limits_from(&welcome(10_000, 5, 10, 1 << 30));
        assert_eq!(l.heartbeat_secs, Limits::default().max_heartbeat_secs);
        assert_eq!(l.max_frame_bytes, 4096);
        // A hub granting more than the agent offered is held to the offer.
        assert_eq!(l.max_in_flight, super::conn::AGENT_MAX_IN_FLIGHT);
    }

    #[test]
    fn renewal_time_does_not_move_when_the_hub_backdates_not_before() {
        let t = 1_800_000_000;
        // A 2 h certificate received at t.
        let plain = renewal_time(t, t + 7200, Some(t), t, false);
        assert_eq!(plain, t + 4800);
        // The same certificate with notBefore backdated by an hour.
        assert_eq!(renewal_time(t - 3600, t + 7200, Some(t), t, false), plain);
        // Without a receive time (older Secret) notBefore is all there is.
        assert_eq!(renewal_time(t - 3600, t + 7200, None, t, false), t + 3600);
        // A receive time before notBefore (a clock behind) changes nothing.
        assert_eq!(renewal_time(t, t + 7200, Some(t - 100), t, false), plain);
        // Right after a renewal, at least half of what is left.
        assert_eq!(renewal_time(t - 3600, t + 600, Some(t), t, true), t + 400);
    }

    #[test]
    fn hub_text_cannot_start_a_log_line() {
        let forged = "bye\n2026-12-03T00:00:00Z  INFO vworkspace_agent: FORGED\r\x1b[2K";
        let Ended::Goodbye(reason, after) = ended_by_goodbye(Goodbye {
            reason: forged.into(),
            retry_after_secs: Some(3),
        }) else {
            panic!("a goodbye ends the session as Goodbye");
        };
        assert_eq!(after, Some(Duration::from_secs(3)));
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
        assert!(reason.starts_with("bye\\n2026"), "{reason}");
        let (code, message) = hub_error_text(ErrorFrame {
            code: "internal\nFORGED".into(),
            message: forged.into(),
        });
        assert!(!code.contains('\n') && !message.chars().any(char::is_control));
    }

    #[test]
    fn only_rejections_become_warning_events() {
        let mut ack = IntentAck {
            intent_id: "i-1".into(),
            intent_seq: 3,
            object: Some(ObjectRef::new(ObjectKind::Operation, "ns", "op")),
            version: Some(2),
            outcome: IntentOutcome::Applied,
        };
        assert!(rejection_event(&ack).is_none());
        ack.outcome = IntentOutcome::Rejected {
            code: "expired".into(),
            message: "intent expired".into(),
        };
        let ev = rejection_event(&ack).unwrap();
        assert_eq!(ev.severity, "Warning");
        assert_eq!(ev.reason, "IntentRejected");
        assert!(ev.message.starts_with("expired: "));
        assert_eq!(ev.intent_id.as_deref(), Some("i-1"));
    }
}
