//! The hub: shared state, start-up, shutdown, and the operations the admin
//! API exposes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, watch};

use vworkspace_protocol::{self as proto, IntentSigner};

use crate::ca::{Ca, CaError};
use crate::faults::Faults;
use crate::keys::{self, KeyError};
use crate::store::{IntentRow, ObjectRow, StatusRow, Store, StoreError, TokenRow};

/// Errors starting or operating the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("cluster {0:?} not found")]
    NotFound(String),
    #[error("cluster {cluster:?} belongs to org {existing:?}, not {requested:?}")]
    OrgMismatch {
        cluster: String,
        existing: String,
        requested: String,
    },
    #[error("join token could not be issued: {0}")]
    Token(String),
    /// The intent could never be sent: its frame is over the tunnel's limit.
    #[error("{0}")]
    Undeliverable(String),
}

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
    /// Intents sent but not yet acked, per tunnel.
    pub window: usize,
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
            window: 32,
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

/// What a live tunnel can be told from outside its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kill {
    /// The cluster was revoked: close with an Error frame.
    Revoked,
    /// Another connection for the same cluster took over.
    Replaced,
    /// The intent-signing key set changed: reconnect to get it in `Welcome`.
    KeysRotated,
}

pub(crate) struct ConnEntry {
    pub id: u64,
    pub wake: Arc<Notify>,
    pub kill: watch::Sender<Option<Kill>>,
}

/// The shared hub state.
pub struct Hub {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) ca: Ca,
    pub(crate) public_url: String,
    /// Revoked certificate serials (hex), checked in the TLS client verifier.
    pub(crate) revoked: Arc<RwLock<HashSet<String>>>,
    pub(crate) conns: Mutex<HashMap<String, ConnEntry>>,
    pub(crate) faults: RwLock<HashMap<String, Faults>>,
    pub(crate) conn_slots: Arc<Semaphore>,
    /// Connections not (yet) authenticated by a client certificate.
    pub(crate) unauth: Arc<crate::unauth::Unauthenticated>,
    pub(crate) enroll_limiter: crate::ratelimit::RateLimiter,
    pub(crate) enroll_audit: crate::ratelimit::AuditThrottle,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) registry: prometheus_client::registry::Registry,
    pub(crate) shutdown: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
    next_conn_id: AtomicU64,
    /// Live tunnel count (for `get clusters` and the load test).
    pub(crate) tunnels: AtomicU64,
    /// The active intent signer and the published key set, refreshed on rotation.
    signer: RwLock<Arc<IntentSigner>>,
    signing_keys: RwLock<Vec<proto::PublicKeyInfo>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// A cluster as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    #[serde(flatten)]
    pub row: crate::store::ClusterRow,
    pub pending_intents: usize,
    pub faults: Faults,
}

/// An object plus its latest reported status, for `get apps|operations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectView {
    #[serde(flatten)]
    pub object: ObjectRow,
    pub status: Option<StatusRow>,
    /// Outcome of the newest acked intent for this object, if any.
    pub last_outcome: Option<String>,
}

/// A newly issued join token. `token` is the secret: shown once, never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub jti: String,
    pub cluster: String,
    pub org: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Kinds the hub can declare on a cluster.
pub const KINDS: &[(&str, &str)] = &[
    ("ApplicationInstance", "apps.vworkspace.io/v1alpha1"),
    ("Operation", "ops.vworkspace.io/v1alpha1"),
];

/// Annotation that addresses a manifest to a cluster when `--cluster` is not given.
pub const CLUSTER_ANNOTATION: &str = "hub.vworkspace.io/cluster";

/// Checks a cluster id / org: a DNS label (lowercase alphanumerics and '-', 1–63).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Refuses object names an agent could not use as Kubernetes names (and
/// that would otherwise reach logs and paths as they are, `../` or newlines
/// included).
fn check_object_names(namespace: &str, name: &str) -> Result<(), HubError> {
    for (what, value) in [("metadata.namespace", namespace), ("metadata.name", name)] {
        if !valid_name(value) {
            return Err(HubError::Invalid(format!(
                "{what} {:?} is not a DNS label (lowercase letters, digits, '-', 1-63 characters)",
                crate::sanitize::for_log(value, 80)
            )));
        }
    }
    Ok(())
}

/// Refuses, at the moment it is declared, an intent whose signed frame could
/// never be sent: the payload over `max_intent_payload_bytes`, or the
/// envelope over `max_frame_bytes` once encoded as MessagePack (JSON floats
/// grow from a few bytes to nine, so a manifest under the admin API's JSON
/// limit can still be too large). The check uses the largest values the
/// fields can take when the intent is sent (times, version, sequence numbers,
/// the foreign-cluster fault), so what passes here always fits.
pub(crate) fn check_deliverable(
    signer: &IntentSigner,
    cluster: &str,
    org: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<(), HubError> {
    let kind_ref = match kind {
        "ApplicationInstance" => proto::ObjectKind::ApplicationInstance,
        "Operation" => proto::ObjectKind::Operation,
        other => return Err(HubError::Invalid(format!("kind {other} cannot be applied"))),
    };
    let limits = proto::Limits::default();
    let payload = proto::IntentPayload {
        v: proto::intent::INTENT_PAYLOAD_VERSION,
        intent_id: uuid::Uuid::nil().to_string(),
        cluster_id: format!("{cluster}-foreign"),
        org: org.to_owned(),
        issued_at: i64::MIN,
        expires_at: i64::MIN,
        object: proto::ObjectRef::new(kind_ref, namespace.to_owned(), name.to_owned()),
        version: u64::MAX,
        action: proto::IntentAction::Apply { spec: spec.clone() },
    };
    let signed = signer
        .sign(&payload)
        .map_err(|e| HubError::Invalid(format!("spec cannot be encoded: {e}")))?;
    let payload_len = signed.payload.len();
    if payload_len > limits.max_intent_payload_bytes {
        return Err(HubError::Undeliverable(format!(
            "{kind} {namespace}/{name}: the intent payload would be {payload_len} bytes as MessagePack, \
             over the limit of {} bytes; make the spec smaller",
            limits.max_intent_payload_bytes
        )));
    }
    let env = proto::Envelope::new(u64::MAX, u64::MAX, proto::Frame::Intent(signed));
    match proto::encode(&env, &limits) {
        Ok(_) => Ok(()),
        Err(proto::EncodeError::Oversized { size, max }) => Err(HubError::Undeliverable(format!(
            "{kind} {namespace}/{name}: the intent frame would be {size} bytes as MessagePack, \
             over the tunnel's frame limit of {max} bytes; make the spec smaller"
        ))),
        Err(e) => Err(HubError::Invalid(format!("spec cannot be encoded: {e}"))),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Reads the admin token from a state dir, creating it (0600) on first start.
pub fn admin_token(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) | Err(_) => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            write_private(&path, &token)?;
            Ok(token)
        }
    }
}

impl Hub {
    /// Opens the state dir and loads (or creates) CA, keys and store.
    pub(crate) fn open(cfg: Config, public_url: String) -> Result<Arc<Self>, HubError> {
        let dir = &cfg.state_dir;
        let state_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HubError::StateDir { path, source }
        };
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(state_err(dir))?;
        }
        // The database holds the CA and signing keys: private from the first
        // byte (SQLite gives its -wal/-shm files the same mode).
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let db = dir.join("hub.db");
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&db)
                .map_err(state_err(&db))?;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
                .map_err(state_err(&db))?;
        }
        let store = Arc::new(Store::open(dir)?);
        let ca = Ca::load_or_create(&store)?;
        keys::ensure_keys(&store)?;
        store.reset_connected()?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).map_err(|source| HubError::StateDir {
            path: dir.join("ca.pem"),
            source,
        })?;
        let revoked = store.revoked_serials()?.into_iter().collect();
        let faults = store
            .all_faults()?
            .into_iter()
            .filter_map(|(c, v)| serde_json::from_value(v).ok().map(|f| (c, f)))
            .collect();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (signer, signing_keys) = load_signing(&store)?;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::Metrics::register(&mut registry);
        Ok(Arc::new(Self {
            unauth: crate::unauth::Unauthenticated::new(
                cfg.max_unauthenticated.clamp(1, cfg.max_connections.max(1)),
            ),
            enroll_limiter: crate::ratelimit::RateLimiter::new(cfg.enroll_rate),
            enroll_audit: crate::ratelimit::AuditThrottle::new(Duration::from_secs(10)),
            metrics,
            registry,
            signer: RwLock::new(signer),
            signing_keys: RwLock::new(signing_keys),
            conn_slots: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            store,
            ca,
            public_url,
            revoked: Arc::new(RwLock::new(revoked)),
            conns: Mutex::new(HashMap::new()),
            faults: RwLock::new(faults),
            shutdown,
            shutdown_tx,
            next_conn_id: AtomicU64::new(1),
            tunnels: AtomicU64::new(0),
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The key that signs new intents.
    pub fn signer(&self) -> Arc<IntentSigner> {
        self.signer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every intent-signing public key agents must accept (not retired).
    pub fn signing_keys(&self) -> Vec<proto::PublicKeyInfo> {
        self.signing_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads signer and key set after a rotation, and asks live tunnels to
    /// reconnect so their agents get the new set in `Welcome`.
    fn keys_changed(&self) -> Result<(), HubError> {
        let (signer, infos) = load_signing(&self.store)?;
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = signer;
        *self.signing_keys.write().unwrap_or_else(|e| e.into_inner()) = infos;
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for entry in conns.values() {
            let _ = entry.kill.send(Some(Kill::KeysRotated));
        }
        Ok(())
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The metrics in the Prometheus text format.
    pub fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &self.registry)?;
        Ok(body)
    }

    /// Number of live tunnels.
    pub fn tunnel_count(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn shutdown_signal(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn begin_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    pub(crate) fn is_revoked_serial(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    pub(crate) fn faults_for(&self, cluster: &str) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned()
            .unwrap_or_default()
    }

    /// Registers a live tunnel for a cluster; an older tunnel of the same
    /// cluster is told to close (the newest connection wins).
    pub(crate) fn register_conn(
        &self,
        cluster: &str,
    ) -> (u64, Arc<Notify>, watch::Receiver<Option<Kill>>) {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (kill, kill_rx) = watch::channel(None);
        let old = self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            cluster.to_owned(),
            ConnEntry {
                id,
                wake: wake.clone(),
                kill,
            },
        );
        if let Some(old) = old {
            let _ = old.kill.send(Some(Kill::Replaced));
        }
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        self.metrics.tunnels_open.inc();
        (id, wake, kill_rx)
    }

    pub(crate) fn unregister_conn(&self, cluster: &str, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(cluster).is_some_and(|e| e.id == id) {
            conns.remove(cluster);
        }
        drop(conns);
        self.tunnels.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tunnels_open.dec();
    }

    fn signal(&self, cluster: &str, kill: Option<Kill>) {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = conns.get(cluster) {
            match kill {
                Some(k) => {
                    let _ = entry.kill.send(Some(k));
                }
                None => entry.wake.notify_one(),
            }
        }
    }

    /// True if the cluster has a live tunnel.
    pub fn is_connected(&self, cluster: &str) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(cluster)
    }

    // ---- admin operations ----

    /// Issues a single-use join token for `cluster` in `org`, creating the
    /// cluster record. A revoked cluster is re-admitted (old certs stay revoked).
    pub fn create_token(
        &self,
        cluster: &str,
        org: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, HubError> {
        if !valid_name(cluster) || !valid_name(org) {
            return Err(HubError::Invalid(
                "cluster and org must be DNS labels (lowercase letters, digits, '-', at most 63)"
                    .into(),
            ));
        }
        let ttl = ttl.unwrap_or(self.cfg.token_ttl);
        if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
            return Err(HubError::Invalid("--ttl must be between 1s and 24h".into()));
        }
        if let Some(existing) = self.store.cluster(cluster)?
            && existing.org != org
        {
            return Err(HubError::OrgMismatch {
                cluster: cluster.into(),
                existing: existing.org,
                requested: org.into(),
            });
        }
        self.store.ensure_cluster(cluster, org)?;
        self.store.unrevoke_cluster(cluster)?;
        let key = keys::active(&self.store, keys::JOIN)?;
        let jti = uuid::Uuid::new_v4().to_string();
        let expires_at = crate::store::now() + ttl.as_secs() as i64;
        let token = crate::wire::issue_join_token(
            &key,
            &self.public_url,
            &self.ca.sha256_hex(),
            cluster,
            org,
            &jti,
            expires_at,
        )
        .map_err(|e| HubError::Token(e.to_string()))?;
        self.store.insert_token(&TokenRow {
            jti: jti.clone(),
            token_sha256: token_hash(&token),
            cluster: cluster.into(),
            org: org.into(),
            expires_at,
            used_at: None,
        })?;
        self.store.audit(
            "token.create",
            Some(cluster),
            "ok",
            &format!("jti={jti} org={org} expires_at={expires_at}"),
        )?;
        Ok(IssuedToken {
            token,
            jti,
            cluster: cluster.into(),
            org: org.into(),
            expires_at,
        })
    }

    /// Declares (or re-declares) an object on a cluster from its manifest.
    pub fn apply(
        &self,
        cluster: Option<&str>,
        manifest: &serde_json::Value,
    ) -> Result<IntentRow, HubError> {
        let kind = manifest
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| HubError::Invalid("manifest has no kind".into()))?;
        let api_version = manifest
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .ok_or_else(|| HubError::Invalid("manifest has no apiVersion".into()))?;
        match KINDS.iter().find(|(k, _)| *k == kind) {
            Some((_, v)) if *v == api_version => {}
            Some((_, v)) => {
                return Err(HubError::Invalid(format!(
                    "{kind} must have apiVersion {v}, not {api_version}"
                )));
            }
            None => {
                return Err(HubError::Invalid(format!(
                    "kind {kind} cannot be applied (ApplicationInstance or Operation)"
                )));
            }
        }
        let meta = manifest
            .get("metadata")
            .ok_or_else(|| HubError::Invalid("manifest has no metadata".into()))?;
        let name = meta
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| HubError::Invalid("metadata.name is required".into()))?;
        let namespace = meta
            .get("namespace")
            .and_then(|n| n.as_str())
            .ok_or_else(|| HubError::Invalid("metadata.namespace is required".into()))?;
        let annotated = meta
            .get("annotations")
            .and_then(|a| a.get(CLUSTER_ANNOTATION))
            .and_then(|c| c.as_str());
        let cluster = cluster.or(annotated).ok_or_else(|| {
            HubError::Invalid(format!(
                "no target cluster: pass --cluster or set annotation {CLUSTER_ANNOTATION}"
            ))
        })?;
        check_object_names(namespace, name)?;
        let Some(spec) = manifest.get("spec").filter(|s| s.is_object()) else {
            return Err(HubError::Invalid("manifest has no spec object".into()));
        };
        let org = self
            .store
            .cluster(cluster)?
            .ok_or_else(|| HubError::NotFound(cluster.into()))?
            .org;
        check_deliverable(&self.signer(), cluster, &org, kind, namespace, name, spec)?;
        let intent = self
            .store
            .create_intent(cluster, kind, namespace, name, "apply", Some(manifest))
            .map_err(|e| match e {
                StoreError::UnknownCluster(c) => HubError::NotFound(c),
                e => e.into(),
            })?;
        self.store.audit(
            "intent.apply",
            Some(cluster),
            "ok",
            &format!("{kind} {namespace}/{name} v{}", intent.version),
        )?;
        self.signal(cluster, None);
        Ok(intent)
    }

    /// Declares that an object must be deleted.
    pub fn delete(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<IntentRow, HubError> {
        if !KINDS.iter().any(|(k, _)| *k == kind) {
            return Err(HubError::Invalid(format!(
                "kind {kind} cannot be deleted (ApplicationInstance or Operation)"
            )));
        }
        check_object_names(namespace, name)?;
        let intent = self
            .store
            .create_intent(cluster, kind, namespace, name, "delete", None)
            .map_err(|e| match e {
                StoreError::UnknownCluster(c) => HubError::NotFound(c),
                e => e.into(),
            })?;
        self.store.audit(
            "intent.delete",
            Some(cluster),
            "ok",
            &format!("{kind} {namespace}/{name} v{}", intent.version),
        )?;
        self.signal(cluster, None);
        Ok(intent)
    }

    pub fn clusters(&self) -> Result<Vec<ClusterView>, HubError> {
        let mut out = Vec::new();
        for mut row in self.store.clusters()? {
            row.connected = self.is_connected(&row.name);
            let pending = self.store.pending_intents(&row.name, 0, 100_000)?.len();
            let faults = self.faults_for(&row.name);
            out.push(ClusterView {
                row,
                pending_intents: pending,
                faults,
            });
        }
        Ok(out)
    }

    pub fn objects(
        &self,
        cluster: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<ObjectView>, HubError> {
        let statuses = self.store.statuses(cluster, kind)?;
        let intents = self.store.intents(cluster, 100_000)?;
        let mut out = Vec::new();
        for object in self.store.objects(cluster, kind)? {
            let status = statuses
                .iter()
                .find(|s| {
                    s.cluster == object.cluster
                        && s.kind == object.kind
                        && s.namespace == object.namespace
                        && s.name == object.name
                })
                .cloned();
            let last_outcome = intents
                .iter()
                .rev()
                .find(|i| {
                    i.cluster == object.cluster
                        && i.kind == object.kind
                        && i.namespace == object.namespace
                        && i.name == object.name
                        && i.outcome.is_some()
                })
                .and_then(|i| i.outcome.clone());
            out.push(ObjectView {
                object,
                status,
                last_outcome,
            });
        }
        Ok(out)
    }

    /// Revokes a cluster: its certificates are refused at the TLS handshake
    /// from now on, and its live tunnel is closed.
    pub fn revoke(&self, cluster: &str) -> Result<Vec<String>, HubError> {
        let serials = self.store.revoke_cluster(cluster).map_err(|e| match e {
            StoreError::UnknownCluster(c) => HubError::NotFound(c),
            e => e.into(),
        })?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(serials.iter().cloned());
        self.signal(cluster, Some(Kill::Revoked));
        self.store.audit(
            "cluster.revoke",
            Some(cluster),
            "ok",
            &format!("{} certificate(s) revoked", serials.len()),
        )?;
        tracing::info!(cluster, certs = serials.len(), "cluster revoked");
        Ok(serials)
    }

    /// Adds a new intent-signing key; live tunnels get the new key set.
    pub fn rotate_keys(&self) -> Result<String, HubError> {
        let kid = keys::rotate(&self.store)?;
        self.keys_changed()?;
        self.store
            .audit("keys.rotate", None, "ok", &format!("new intent key {kid}"))?;
        tracing::info!(kid, "intent-signing key rotated");
        Ok(kid)
    }

    pub fn retire_key(&self, kid: &str) -> Result<(), HubError> {
        keys::retire(&self.store, kid)?;
        self.keys_changed()?;
        self.store.audit(
            "keys.retire",
            None,
            "ok",
            &format!("intent key {kid} retired"),
        )?;
        Ok(())
    }

    pub fn set_faults(&self, cluster: &str, faults: Faults) -> Result<(), HubError> {
        if self.store.cluster(cluster)?.is_none() {
            return Err(HubError::NotFound(cluster.into()));
        }
        self.store.put_faults(
            cluster,
            &serde_json::to_value(&faults).map_err(StoreError::from)?,
        )?;
        self.faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_owned(), faults.clone());
        self.store.audit(
            "faults.set",
            Some(cluster),
            "ok",
            &serde_json::to_string(&faults).unwrap_or_default(),
        )?;
        // The live tunnel re-reads its switches when woken.
        self.signal(cluster, None);
        Ok(())
    }
}

type SigningState = (Arc<IntentSigner>, Vec<proto::PublicKeyInfo>);

fn load_signing(store: &Store) -> Result<SigningState, HubError> {
    let active = keys::active(store, keys::INTENT)?;
    let signer = IntentSigner::from_pkcs8(active.pkcs8())
        .map_err(|_| KeyError::Corrupt(active.kid.clone()))?;
    let infos = keys::published(store, keys::INTENT)?
        .into_iter()
        .map(|k| proto::PublicKeyInfo {
            kid: k.kid,
            public_key_hex: k.public_key,
        })
        .collect();
    Ok((Arc::new(signer), infos))
}

/// SHA-256 of a token, hex: what the store keeps instead of the token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}
