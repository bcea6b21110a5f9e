//! The tunnel client: one mutual-TLS WebSocket to the hub at a time.
//!
//! The supervisor waits for credentials, connects, and after the connection
//! ends waits an exponentially growing, fully jittered delay (or the hub's
//! `Goodbye.retry_after` plus jitter) before the next attempt. Credentials
//! are re-read from their Secret on every attempt, so a renewal or a new
//! enrollment is used without a restart.
//!
//! On a connection: `Hello` (with the intent versions applied, read from the
//! cluster) → `Welcome` → `Inventory`, then one task drives everything:
//! incoming frames, intents handed to a worker through a bounded queue, acks
//! and statuses going out, pings, the idle timeout, certificate renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use vworkspace_crds::well_known::{annotations, labels};
use vworkspace_crds::{ApplicationInstance, Operation};
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{
    AppliedVersion, CertIssued, Envelope, ErrorCode, ErrorFrame, Frame, Goodbye, Hello, IntentAck,
    Inventory, Limits, ObjectKind, ObjectRef, RenewCert, SUBPROTOCOL_V1, SignedIntent, Welcome,
};

use crate::apply::Applier;
use crate::args::NamespaceList;
use crate::cluster_status::ClusterStatusWriter;
use crate::creds::{self, Credentials, CredsError};
use crate::enroll::{self, KeyAndCsr};
use crate::logging::Redactor;
use crate::metrics::Metrics;
use crate::status::StatusHub;

/// Deadline for TCP + TLS + WebSocket handshake, and for `Welcome`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often `status.lastHeartbeat` of the Cluster is refreshed while connected.
const HEARTBEAT_STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// Statuses sent per loop turn, so incoming frames are never starved.
const STATUS_BATCH: usize = 64;
/// Retry a renewal that got no answer after this long.
const RENEWAL_RETRY: Duration = Duration::from_secs(300);
/// Capabilities announced in `Hello`.
const CAPABILITIES: &[&str] = &["status-digest", "renew-cert", "delete"];

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
    TlsConfig(String),
    /// The hub refused this identity (HTTP 401/403 or a TLS alert).
    #[error("the hub refused this agent's identity: {0}")]
    Rejected(String),
    /// Network, TLS or WebSocket failure.
    #[error("tunnel connection failed: {0}")]
    Io(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing was heard from the hub for the idle timeout.
    #[error("the hub was silent for {0:?}")]
    Idle(Duration),
    /// Reading the applied versions from the cluster failed.
    #[error("reading applied versions: {0}")]
    Kube(#[from] kube::Error),
    /// The client certificate expired; enrollment recovers it (crate::recovery).
    #[error(
        "the client certificate expired; waiting for its recovery (see the Authenticated condition)"
    )]
    CertificateExpired,
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
    /// Extra namespace allow-list for intents.
    pub allowed_namespaces: NamespaceList,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// Metrics.
    pub metrics: Metrics,
    /// Status stream.
    pub status: StatusHub,
    /// Cluster status writer.
    pub cluster_status: ClusterStatusWriter,
    /// Publishes the connection state.
    pub state: watch::Sender<ConnState>,
    /// Current identity, from enrollment.
    pub creds: watch::Receiver<Option<Arc<Credentials>>>,
    /// Secrets to keep out of logs.
    pub redactor: Redactor,
    /// Versions of deleted objects.
    pub tombstones: crate::tombstones::Tombstones,
}

fn set_state(tx: &watch::Sender<ConnState>, metrics: &Metrics, s: ConnState) {
    metrics.connection_state.set(s.gauge());
    tx.send_replace(s);
}

impl Tunnel {
    /// Runs the supervisor until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        loop {
            if self.creds.borrow_and_update().is_none() {
                set_state(&self.state, &self.metrics, ConnState::WaitingForCredentials);
                tokio::select! {
                    biased;
                    _ = crate::signaled(&mut shutdown) => return,
                    r = self.creds.changed() => if r.is_err() { return },
                }
                continue;
            }
            set_state(&self.state, &self.metrics, ConnState::Connecting);
            let was_up = AtomicBool::new(false);
            let result = self.connect_once(&mut shutdown, &was_up).await;
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
                    let d = crate::backoff::after_goodbye(retry_after, self.backoff_max);
                    tracing::info!(%reason, ?retry_after, delay = ?d, "Hub said goodbye");
                    (d, format!("the hub closed the tunnel: {reason}"), false)
                }
                Ok(Ended::Goodbye(reason, None)) => {
                    attempt += 1;
                    let d =
                        crate::backoff::full_jitter(self.backoff_min, self.backoff_max, attempt);
                    tracing::info!(%reason, delay = ?d, "Hub said goodbye");
                    (d, format!("the hub closed the tunnel: {reason}"), false)
                }
                Ok(Ended::Closed) => {
                    attempt += 1;
                    let d =
                        crate::backoff::full_jitter(self.backoff_min, self.backoff_max, attempt);
                    tracing::info!(delay = ?d, "Tunnel closed by the hub");
                    (d, "the tunnel was closed".to_owned(), false)
                }
                Err(error) => {
                    attempt += 1;
                    let d =
                        crate::backoff::full_jitter(self.backoff_min, self.backoff_max, attempt);
                    let rejected = matches!(error, TunnelError::Rejected(_));
                    tracing::warn!(%error, attempt, delay = ?d, "Tunnel connection failed");
                    (d, error.to_string(), rejected)
                }
            };
            set_state(&self.state, &self.metrics, ConnState::Disconnected);
            if let Err(error) = self.cluster_status.disconnected(&message, rejected).await {
                tracing::warn!(%error, "Failed to update the Cluster status");
            }
            self.metrics.reconnects.inc();
            tokio::select! {
                biased;
                _ = crate::signaled(&mut shutdown) => return,
                _ = tokio::time::sleep(delay) => {}
                r = self.creds.changed() => if r.is_err() { return },
            }
        }
    }

    async fn connect_once(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        was_up: &AtomicBool,
    ) -> Result<Ended, TunnelError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let creds = Credentials::load(&secrets, &self.namespace, &self.credentials_secret).await?;
        self.redactor.register(&creds.key_pem);
        if let Some(na) = creds.not_after() {
            self.metrics.cert_expiry.set(na);
        }
        if crate::recovery::tunnel_must_wait(&creds) {
            return Err(TunnelError::CertificateExpired);
        }
        let url = match &self.hub_endpoint {
            Some(h) => enroll::tunnel_url_from(h),
            None => creds.tunnel_url.clone(),
        };
        let tls = client_config(&creds)?;
        let mut limits = Limits::default();
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| TunnelError::Io(format!("tunnel URL {url}: {e}")))?;
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL_V1),
        );
        let ws_cfg = ws_config(&limits);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_cfg),
            true,
            Some(Connector::Rustls(Arc::new(tls))),
        );
        let (ws, resp) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| TunnelError::Io("handshake timed out".into()))?
            .map_err(classify)?;
        let proto = resp
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        if proto != Some(SUBPROTOCOL_V1) {
            return Err(TunnelError::Protocol(format!(
                "the hub selected subprotocol {proto:?}, expected {SUBPROTOCOL_V1}"
            )));
        }
        let mut conn = Conn::new(ws, self.metrics.clone(), limits.clone());

        // Hello with what the cluster holds, so the hub resends only newer intents.
        let applied = applied_versions(&self.client).await?;
        conn.send_hello(applied).await?;
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.expect_welcome())
            .await
            .map_err(|_| TunnelError::Protocol("no Welcome from the hub".into()))??;
        if welcome.cluster_id != creds.cluster_id {
            return Err(TunnelError::Protocol(format!(
                "the hub bound this connection to cluster {:?}, the credentials are for {:?}",
                welcome.cluster_id, creds.cluster_id
            )));
        }
        limits = limits_from(&welcome);
        conn.limits = limits.clone();
        crate::recovery::on_welcome(
            &self.cluster_status,
            &creds.cluster_id,
            welcome.server_time,
            welcome.recovery_window_secs,
        );
        let keys = if welcome.signing_keys.is_empty() {
            creds.key_ring()
        } else {
            creds::key_ring(&welcome.signing_keys)
        };
        let applier = Applier {
            client: self.client.clone(),
            cluster_id: creds.cluster_id.clone(),
            org: creds.org.clone(),
            keys,
            allowed_namespaces: self.allowed_namespaces.clone(),
            limits: limits.clone(),
            metrics: self.metrics.clone(),
            tombstones: self.tombstones.clone(),
            ns_cache: Default::default(),
        };
        // Room for the hub's whole window twice over (duplicates); a hub that
        // exceeds it is broken and gets an error, not unbounded memory.
        let depth = (limits.max_in_flight as usize).saturating_mul(2) + 8;
        let (intent_tx, intent_rx) = mpsc::channel::<(u64, SignedIntent)>(depth);
        let (ack_tx, mut ack_rx) = mpsc::channel::<IntentAck>(depth);
        let _worker = AbortOnDrop(tokio::spawn(intent_worker(
            applier,
            intent_rx,
            ack_tx,
            self.metrics.clone(),
        )));

        was_up.store(true, Ordering::Relaxed);
        set_state(&self.state, &self.metrics, ConnState::Connected);
        tracing::info!(cluster_id = %escape(&welcome.cluster_id, 253), org = %escape(&welcome.org, 253), heartbeat = welcome.heartbeat_secs, "Tunnel connected");
        spawn_status_write(self.cluster_status.clone(), true);
        self.status.connection_started();
        conn.send_inventory(self.status.inventory()).await?;

        let heartbeat = Duration::from_secs(u64::from(limits.heartbeat_secs.max(1)));
        let idle = Duration::from_secs(u64::from(limits.idle_timeout_secs.max(2)));
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval_at(
            Instant::now() + HEARTBEAT_STATUS_INTERVAL,
            HEARTBEAT_STATUS_INTERVAL,
        );
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal = Renewal::new(&creds);
        let identity = (creds.cluster_id.clone(), creds.token_fingerprint.clone());
        self.creds.mark_unchanged();

        loop {
            let more_status = self.status.pending() > 0;
            let renew_at = renewal.at;
            tokio::select! {
                biased;
                _ = crate::signaled(shutdown) => {
                    conn.goodbye("agent shutting down").await;
                    return Ok(Ended::Shutdown);
                }
                r = self.creds.changed() => {
                    let changed = r.is_err() || self.creds.borrow().as_ref().is_none_or(|c| {
                        (c.cluster_id.clone(), c.token_fingerprint.clone()) != identity
                    });
                    if changed {
                        conn.goodbye("credentials changed").await;
                        return Ok(Ended::IdentityChanged);
                    }
                }
                msg = conn.stream.next() => {
                    conn.last_rx = Instant::now();
                    let env = match conn.incoming(msg).await? {
                        Incoming::Envelope(env) => *env,
                        Incoming::Control => continue,
                        Incoming::Closed => return Ok(Ended::Closed),
                    };
                    self.status.acked(env.ack);
                    match env.body {
                        Frame::Intent(si) => {
                            if intent_tx.try_send((env.seq, si)).is_err() {
                                conn.fail(ErrorCode::TooManyInFlight, "more unacknowledged intents than max_in_flight").await;
                                return Err(TunnelError::Protocol("the hub exceeded max_in_flight".into()));
                            }
                            self.metrics.queue("intents", depth - intent_tx.capacity());
                        }
                        Frame::ResyncRequest(r) => {
                            tracing::info!(reason = %escape(r.reason.as_deref().unwrap_or(""), 200), objects = r.objects.len(), "Hub asked for a resync");
                            if r.objects.is_empty() {
                                conn.send_inventory(self.status.inventory()).await?;
                            } else {
                                self.status.resync(&r.objects);
                            }
                        }
                        Frame::CertIssued(c) => self.renewed(&creds, &mut renewal, c).await,
                        Frame::Goodbye(goodbye) => return Ok(ended_by_goodbye(goodbye)),
                        Frame::Error(e) => {
                            let parsed = ErrorCode::parse(&e.code);
                            let (code, message) = hub_error_text(e);
                            tracing::warn!(%code, %message, "Hub reported a protocol error");
                            if parsed == Some(ErrorCode::Unauthorized) {
                                return Err(TunnelError::Rejected(message));
                            }
                            if parsed.is_some_and(|c| c.is_fatal()) {
                                return Err(TunnelError::Protocol(format!("{code}: {message}")));
                            }
                        }
                        Frame::Welcome(_) => tracing::warn!("Ignoring a second Welcome"),
                        Frame::Unsupported { type_name } => {
                            let name: String = type_name.chars().take(64).collect();
                            conn.send(Frame::Error(ErrorFrame {
                                code: ErrorCode::UnsupportedFrame.as_str().into(),
                                message: format!("frame type {name:?} is not supported"),
                            })).await?;
                        }
                        other => {
                            let what = format!("{} is an agent-to-hub frame", other.type_name());
                            conn.fail(ErrorCode::UnexpectedFrame, &what).await;
                            return Err(TunnelError::Protocol(what));
                        }
                    }
                }
                Some(ack) = ack_rx.recv() => {
                    let event = rejection_event(&ack);
                    conn.send(Frame::IntentAck(ack)).await?;
                    if let Some(ev) = event {
                        conn.send(Frame::Event(ev)).await?;
                    }
                }
                _ = tokio::time::sleep_until(conn.last_rx + idle) => {
                    return Err(TunnelError::Idle(idle));
                }
                _ = ping.tick() => {
                    conn.send_msg(Message::Ping(Default::default())).await?;
                }
                _ = beat.tick() => spawn_status_write(self.cluster_status.clone(), false),
                _ = sleep_until_opt(renew_at) => {
                    renewal.start(&mut conn, &self.metrics, &self.redactor, &creds).await?;
                }
                _ = self.status.changed(), if !more_status => {}
                _ = std::future::ready(()), if more_status => {
                    for st in self.status.take_dirty(STATUS_BATCH) {
                        match conn.send(Frame::Status(st.clone())).await {
                            Ok(seq) => self.status.sent(seq, &st),
                            Err(TunnelError::Protocol(e)) => {
                                // Too large to send: drop this status, keep the tunnel.
                                tracing::warn!(object = %st.object, error = %e, "Status not sent");
                                self.metrics.status_dropped.inc();
                            }
                            Err(e) => {
                                self.status.unsent(&st);
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
    }

    async fn renewed(&self, creds: &Credentials, renewal: &mut Renewal, issued: CertIssued) {
        match renewal.finish(creds, issued) {
            Ok(new) => {
                let owner = match self
                    .cluster_status
                    .api()
                    .get_opt(self.cluster_status.name())
                    .await
                {
                    Ok(c) => c.as_ref().and_then(enroll::owner_ref),
                    Err(_) => None,
                };
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                match new.store(&secrets, &self.credentials_secret, owner).await {
                    Ok(()) => {
                        self.metrics.renewal("ok");
                        let na = new.not_after();
                        if let Some(na) = na {
                            self.metrics.cert_expiry.set(na);
                        }
                        *renewal = Renewal::after_renewal(&new);
                        tracing::info!(not_after = ?na, "Client certificate renewed");
                        let _ = self
                            .cluster_status
                            .update(|s| {
                                s.certificate_not_after = na.and_then(enroll::time_from_unix)
                            })
                            .await;
                    }
                    Err(error) => {
                        self.metrics.renewal("store_failed");
                        tracing::warn!(%error, "Storing the renewed certificate failed");
                    }
                }
            }
            Err(why) => {
                self.metrics.renewal("refused");
                tracing::warn!(%why, "Ignoring a CertIssued frame");
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Cluster status writes happen off the tunnel loop so a slow API server
/// cannot stall the connection; each is one short request.
fn spawn_status_write(w: ClusterStatusWriter, connected: bool) {
    tokio::spawn(async move {
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

/// Intents applied at once (for different objects).
const APPLY_CONCURRENCY: usize = 8;

async fn intent_worker(
    applier: Applier,
    mut rx: mpsc::Receiver<(u64, SignedIntent)>,
    tx: mpsc::Sender<IntentAck>,
    metrics: Metrics,
) {
    // Intents for one object apply in arrival order; different objects apply
    // concurrently, at most APPLY_CONCURRENCY at a time. One intent waits in
    // `next` while its object is busy; the queue behind it stays bounded.
    let applier = Arc::new(applier);
    let mut running: tokio::task::JoinSet<(Option<ObjectRef>, IntentAck)> =
        tokio::task::JoinSet::new();
    let mut busy: std::collections::HashSet<ObjectRef> = std::collections::HashSet::new();
    let mut ids: std::collections::HashMap<tokio::task::Id, Option<ObjectRef>> =
        std::collections::HashMap::new();
    let mut next: Option<(u64, SignedIntent, Option<ObjectRef>)> = None;
    let mut closed = false;
    loop {
        if let Some((seq, intent, object)) = next.take() {
            let blocked = running.len() >= APPLY_CONCURRENCY
                || object.as_ref().is_some_and(|o| busy.contains(o));
            if blocked {
                next = Some((seq, intent, object));
            } else {
                if let Some(o) = &object {
                    busy.insert(o.clone());
                }
                let applier = applier.clone();
                let key = object.clone();
                let handle = running.spawn(async move {
                    let ack = applier.handle(seq, &intent).await;
                    (object, ack)
                });
                ids.insert(handle.id(), key);
            }
        }
        if closed && next.is_none() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, ack) = match done {
                    Ok((id, (_, ack))) => (id, Some(ack)),
                    // A panicked apply frees its object; the hub resends the intent later.
                    Err(e) => (e.id(), None),
                };
                if let Some(Some(o)) = ids.remove(&id) {
                    busy.remove(&o);
                }
                if let Some(ack) = ack
                    && tx.send(ack).await.is_err()
                {
                    return;
                }
            }
            got = rx.recv(), if next.is_none() && !closed => {
                match got {
                    Some((seq, intent)) => {
                        metrics.queue("intents", rx.len());
                        let object = intent.peek_payload().ok().map(|p| p.object);
                        next = Some((seq, intent, object));
                    }
                    None => closed = true,
                }
            }
        }
    }
}

/// The audit event for a rejected intent (protocol: every rejection is also a Warning event).
fn rejection_event(ack: &IntentAck) -> Option<vworkspace_protocol::Event> {
    let vworkspace_protocol::IntentOutcome::Rejected { code, message } = &ack.outcome else {
        return None;
    };
    Some(vworkspace_protocol::Event {
        time: vworkspace_protocol::unix_now(),
        severity: "Warning".into(),
        reason: "IntentRejected".into(),
        message: format!("{code}: {message}"),
        object: ack.object.clone(),
        intent_id: (!ack.intent_id.is_empty()).then(|| ack.intent_id.clone()),
    })
}

/// Reads the applied intent version of every object the hub manages.
pub async fn applied_versions(client: &kube::Client) -> Result<Vec<AppliedVersion>, kube::Error> {
    let selector = format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_CONTROL_PLANE
    );
    let mut out = Vec::new();
    collect_applied(
        &Api::<ApplicationInstance>::all(client.clone()),
        &selector,
        ObjectKind::ApplicationInstance,
        &mut out,
    )
    .await?;
    collect_applied(
        &Api::<Operation>::all(client.clone()),
        &selector,
        ObjectKind::Operation,
        &mut out,
    )
    .await?;
    Ok(out)
}

async fn collect_applied<K>(
    api: &Api<K>,
    selector: &str,
    kind: ObjectKind,
    out: &mut Vec<AppliedVersion>,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut lp = ListParams::default().labels(selector).limit(500);
    loop {
        let page = api.list_metadata(&lp).await?;
        for o in &page.items {
            let m = &o.metadata;
            let version = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::APPLIED_INTENT_VERSION))
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(ns), Some(name), Some(version)) = (&m.namespace, &m.name, version) {
                out.push(AppliedVersion {
                    object: ObjectRef::new(kind, ns.clone(), name.clone()),
                    version,
                });
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(()),
        }
    }
}

fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, TunnelError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in creds.ca_certs() {
        roots
            .add(ca)
            .map_err(|e| TunnelError::TlsConfig(format!("CA bundle: {e}")))?;
    }
    let key = creds
        .key()
        .map_err(|_| TunnelError::TlsConfig("the private key does not parse".into()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TunnelError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(creds.certs(), key)
        .map_err(|e| TunnelError::TlsConfig(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn ws_config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_write_buffer_size(4 * limits.max_frame_bytes)
}

fn limits_from(w: &Welcome) -> Limits {
    let d = Limits::default();
    let heartbeat = w.heartbeat_secs.clamp(1, d.max_heartbeat_secs);
    let idle = w.idle_timeout_secs.max(heartbeat.saturating_mul(2));
    let frame = usize::try_from(w.max_frame_bytes)
        .unwrap_or(usize::MAX)
        .clamp(4096, d.max_frame_bytes);
    Limits::default()
        .with_heartbeat(heartbeat, idle)
        .with_max_frame_bytes(frame)
        .with_max_in_flight(w.max_in_flight.clamp(1, 1024))
}

fn classify(e: tungstenite::Error) -> TunnelError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let msg = format!("HTTP {status} on the tunnel upgrade");
            if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
                TunnelError::Rejected(msg)
            } else {
                TunnelError::Io(msg)
            }
        }
        other => {
            let s = other.to_string();
            // The hub refuses a revoked or foreign certificate with a TLS alert.
            if s.contains("Revoked") || s.contains("BadCertificate") || s.contains("UnknownCA") {
                TunnelError::Rejected(s)
            } else {
                TunnelError::Io(s)
            }
        }
    }
}

// === connection ===

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

enum Incoming {
    Envelope(Box<Envelope>),
    Control,
    Closed,
}

struct Conn {
    sink: futures::stream::SplitSink<Ws, Message>,
    stream: futures::stream::SplitStream<Ws>,
    out_seq: u64,
    in_seq: u64,
    last_rx: Instant,
    limits: Limits,
    metrics: Metrics,
}

impl Conn {
    fn new(ws: Ws, metrics: Metrics, limits: Limits) -> Self {
        let (sink, stream) = ws.split();
        Self {
            sink,
            stream,
            out_seq: 0,
            in_seq: 0,
            last_rx: Instant::now(),
            limits,
            metrics,
        }
    }

    /// Encodes and sends one frame; returns its seq. An oversized frame is a
    /// `Protocol` error and nothing is sent.
    async fn send(&mut self, body: Frame) -> Result<u64, TunnelError> {
        let seq = self.out_seq + 1;
        let type_name = body.type_name().to_owned();
        let env = Envelope::new(seq, self.in_seq, body);
        let bytes = vworkspace_protocol::encode(&env, &self.limits)
            .map_err(|e| TunnelError::Protocol(e.to_string()))?;
        self.out_seq = seq;
        self.send_msg(Message::Binary(bytes.into())).await?;
        self.metrics.frame("out", &type_name);
        Ok(seq)
    }

    async fn send_msg(&mut self, msg: Message) -> Result<(), TunnelError> {
        // A hub that stops reading is dropped after the idle timeout, not buffered for.
        let idle = Duration::from_secs(u64::from(self.limits.idle_timeout_secs.max(2)));
        match tokio::time::timeout(idle, self.sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TunnelError::Io(e.to_string())),
            Err(_) => Err(TunnelError::Idle(idle)),
        }
    }

    async fn send_hello(&mut self, mut applied: Vec<AppliedVersion>) -> Result<(), TunnelError> {
        loop {
            let hello = Frame::Hello(Hello {
                agent_version: crate::AGENT_VERSION.to_owned(),
                capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                applied: applied.clone(),
            });
            match self.send(hello).await {
                Ok(_) => return Ok(()),
                // Too many objects for one frame: send fewer; the hub then
                // resends some applied intents, which are acked as noop.
                Err(TunnelError::Protocol(_)) if !applied.is_empty() => {
                    applied.truncate(applied.len() / 2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_inventory(&mut self, mut inv: Inventory) -> Result<(), TunnelError> {
        loop {
            match self.send(Frame::Inventory(inv.clone())).await {
                Ok(_) => return Ok(()),
                Err(TunnelError::Protocol(_)) if !inv.objects.is_empty() => {
                    inv.objects.truncate(inv.objects.len() / 2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn expect_welcome(&mut self) -> Result<Welcome, TunnelError> {
        loop {
            let msg = self.stream.next().await;
            match self.incoming(msg).await? {
                Incoming::Envelope(env) => {
                    return match env.body {
                        Frame::Welcome(w) => Ok(w),
                        Frame::Goodbye(g) => Err(TunnelError::Io(format!(
                            "the hub said goodbye before Welcome: {}",
                            g.reason.chars().take(200).collect::<String>()
                        ))),
                        Frame::Error(e) if e.code == ErrorCode::Unauthorized.as_str() => {
                            Err(TunnelError::Rejected(e.message.chars().take(200).collect()))
                        }
                        other => Err(TunnelError::Protocol(format!(
                            "expected welcome, got {}",
                            other.type_name()
                        ))),
                    };
                }
                Incoming::Control => continue,
                Incoming::Closed => {
                    return Err(TunnelError::Io("the hub closed before Welcome".into()));
                }
            }
        }
    }

    /// Decodes and sequence-checks one message from the hub.
    async fn incoming(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Incoming, TunnelError> {
        let msg = match msg {
            None => return Ok(Incoming::Closed),
            Some(Err(tungstenite::Error::Capacity(_))) => {
                self.fail(ErrorCode::FrameTooLarge, "frame exceeds max_frame_bytes")
                    .await;
                return Err(TunnelError::Protocol(
                    "the hub sent an oversized frame".into(),
                ));
            }
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                return Ok(Incoming::Closed);
            }
            Some(Err(e)) => return Err(TunnelError::Io(e.to_string())),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(bytes) => {
                let env = match vworkspace_protocol::decode(&bytes, &self.limits) {
                    Ok(env) => env,
                    Err(e) => {
                        let code = e.error_code();
                        self.fail(code, &e.to_string()).await;
                        return Err(TunnelError::Protocol(format!("undecodable frame: {e}")));
                    }
                };
                if env.seq != self.in_seq + 1 {
                    let what = format!("expected seq {}, got {}", self.in_seq + 1, env.seq);
                    self.fail(ErrorCode::SequenceError, &what).await;
                    return Err(TunnelError::Protocol(what));
                }
                if env.ack > self.out_seq {
                    let what = format!("ack {} names an unsent seq", env.ack);
                    self.fail(ErrorCode::SequenceError, &what).await;
                    return Err(TunnelError::Protocol(what));
                }
                self.in_seq = env.seq;
                self.metrics.frame("in", env.body.type_name());
                Ok(Incoming::Envelope(Box::new(env)))
            }
            Message::Text(_) => {
                self.fail(
                    ErrorCode::MalformedFrame,
                    "text frames are not part of the protocol",
                )
                .await;
                Err(TunnelError::Protocol("the hub sent a text frame".into()))
            }
            Message::Close(_) => Ok(Incoming::Closed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(Incoming::Control),
        }
    }

    /// Sends an `Error` frame and closes (best effort).
    async fn fail(&mut self, code: ErrorCode, message: &str) {
        let _ = self
            .send(Frame::Error(ErrorFrame {
                code: code.as_str().to_owned(),
                message: message.chars().take(200).collect(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }

    /// Sends `Goodbye` and closes (best effort).
    async fn goodbye(&mut self, reason: &str) {
        let _ = self
            .send(Frame::Goodbye(Goodbye {
                reason: reason.to_owned(),
                retry_after_secs: None,
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

// === renewal ===

/// Certificate renewal over the tunnel at about two thirds of the lifetime.
struct Renewal {
    at: Option<Instant>,
    pending: Option<KeyAndCsr>,
}

impl Renewal {
    /// Schedules renewal at two thirds of the certificate's lifetime.
    fn new(creds: &Credentials) -> Self {
        Self::scheduled(creds, false)
    }

    /// After a renewal, also wait at least half of what is left, so a hub
    /// that backdates `notBefore` (clock skew) cannot cause a renewal storm.
    fn after_renewal(creds: &Credentials) -> Self {
        Self::scheduled(creds, true)
    }

    fn scheduled(creds: &Credentials, just_renewed: bool) -> Self {
        let now = vworkspace_protocol::unix_now();
        let at = creds.validity().map(|(nb, na)| {
            let renew_unix = renewal_time(nb, na, creds.received_at, now, just_renewed);
            let wait = (renew_unix - now).max(0) as u64;
            Instant::now() + Duration::from_secs(wait)
        });
        Self { at, pending: None }
    }

    async fn start(
        &mut self,
        conn: &mut Conn,
        metrics: &Metrics,
        redactor: &Redactor,
        creds: &Credentials,
    ) -> Result<(), TunnelError> {
        self.at = Some(Instant::now() + RENEWAL_RETRY);
        let kc = match enroll::generate_key_and_csr(&creds.cluster_id) {
            Ok(kc) => kc,
            Err(error) => {
                metrics.renewal("key_failed");
                tracing::warn!(%error, "Renewal key generation failed");
                return Ok(());
            }
        };
        redactor.register(&kc.key_pem);
        let csr_pem = kc.csr_pem.clone();
        self.pending = Some(kc);
        tracing::info!("Requesting a renewed client certificate");
        conn.send(Frame::RenewCert(RenewCert { csr_pem })).await?;
        Ok(())
    }

    fn finish(&mut self, creds: &Credentials, issued: CertIssued) -> Result<Credentials, String> {
        let kc = self
            .pending
            .take()
            .ok_or_else(|| "no renewal was requested".to_owned())?;
        let leaf =
            rustls_pki_types::CertificateDer::pem_slice_iter(issued.certificate_pem.as_bytes())
                .find_map(Result::ok)
                .ok_or_else(|| "no certificate in CertIssued".to_owned())?;
        if creds::cert_spki(leaf.as_ref()).as_deref() != Some(kc.spki_der.as_slice()) {
            return Err("the certificate is not for the renewal key".into());
        }
        if rustls_pki_types::CertificateDer::pem_slice_iter(issued.ca_bundle_pem.as_bytes())
            .filter_map(Result::ok)
            .next()
            .is_none()
        {
            return Err("empty CA bundle".into());
        }
        Ok(Credentials {
            key_pem: kc.key_pem,
            cert_pem: issued.certificate_pem,
            ca_pem: issued.ca_bundle_pem,
            received_at: Some(vworkspace_protocol::unix_now()),
            ..creds.clone()
        })
    }
}

use rustls_pki_types::pem::PemObject;

/// When to send `renew_cert`, Unix seconds (docs/protocol.md §7): two thirds
/// of the way from `start` to `notAfter`, where `start` is the later of
/// `notBefore` and the moment the agent received the certificate. A hub that
/// backdates `notBefore` for clock skew therefore does not move renewal
/// earlier. Right after a renewal the agent also waits at least half of what
/// is left, so a misbehaving hub cannot cause a renewal storm.
fn renewal_time(
    not_before: i64,
    not_after: i64,
    received_at: Option<i64>,
    now: i64,
    just_renewed: bool,
) -> i64 {
    let start = received_at
        .filter(|r| *r < not_after)
        .map_or(not_before, |r| r.max(not_before));
    let mut at = start + (not_after - start) * 2 / 3;
    if just_renewed {
        at = at.max(now + (not_after - now) / 2);
    }
    at
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
    use super::*;
    use vworkspace_protocol::IntentOutcome;

    fn welcome(heartbeat: u32, idle: u32, frame: u64, in_flight: u32) -> Welcome {
        Welcome {
            cluster_id: "c".into(),
            org: "o".into(),
            server_time: 0,
            heartbeat_secs: heartbeat,
            idle_timeout_secs: idle,
            max_frame_bytes: frame,
            max_in_flight: in_flight,
            signing_keys: Vec::new(),
            recovery_window_secs: None,
        }
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
        assert_eq!(l.max_in_flight, 1024);
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
