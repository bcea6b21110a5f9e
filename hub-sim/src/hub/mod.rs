//! The hub: shared state, start-up, shutdown, and the operations the admin
//! API exposes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};

use vworkspace_protocol::{self as proto, IntentSigner};

mod config;
mod operations;

pub use config::{Config, StorageLimits};
pub use operations::{
    CLUSTER_ANNOTATION, CaRotationView, ClusterView, IssuedToken, KINDS, ObjectView, valid_name,
};

use crate::ca::{Ca, CaError, CaRing, RotationError};
use crate::faults::Faults;
use crate::keys::{self, KeyError};
use crate::store::{Store, StoreError};

/// Errors starting or operating the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Loading or rotating the signing keys failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A CA rotation step was refused.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// A file in the state directory could not be created, read or written.
    #[error("state dir {path}: {source}")]
    StateDir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener (`TLS listener` or `admin API`).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS server configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A request to the hub (manifest, TTL, kind, ...) is not valid; the text says why.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No cluster of that name exists.
    #[error("cluster {0:?} not found")]
    NotFound(String),
    /// A join token names a known cluster with a different organisation.
    #[error("cluster {cluster:?} belongs to org {existing:?}, not {requested:?}")]
    OrgMismatch {
        /// The cluster.
        cluster: String,
        /// The organisation it was created with.
        existing: String,
        /// The organisation the request named.
        requested: String,
    },
    /// Signing the join token failed.
    #[error("join token could not be issued: {0}")]
    Token(String),
    /// The intent could never be sent: its frame is over the tunnel's limit.
    #[error("{0}")]
    Undeliverable(String),
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
    /// A CA rotation step: reconnect to get the bundle in `Welcome` and the
    /// new server certificate.
    CaRotated,
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
    /// The hub CA(s); replaced as a whole by each `rotate-ca` step.
    ca: RwLock<Arc<CaRing>>,
    /// TLS settings for new connections, rebuilt by each `rotate-ca` step.
    acceptor: RwLock<Option<tokio_rustls::TlsAcceptor>>,
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
        let ca = CaRing::load_or_create(&store)?;
        keys::ensure_keys(&store)?;
        store.reset_connected()?;
        std::fs::write(dir.join("ca.pem"), ca.issuing().cert_pem()).map_err(|source| {
            HubError::StateDir {
                path: dir.join("ca.pem"),
                source,
            }
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
            ca: RwLock::new(Arc::new(ca)),
            acceptor: RwLock::new(None),
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

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The CA that issues certificates now (the one new join tokens pin).
    pub fn ca(&self) -> Arc<Ca> {
        self.ca_ring().issuing()
    }

    /// Every CA of the hub and the rotation stage.
    pub fn ca_ring(&self) -> Arc<CaRing> {
        self.ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_ca_ring(&self, ring: CaRing) {
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_acceptor(&self, acceptor: tokio_rustls::TlsAcceptor) {
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
    }

    /// The configuration the hub was started with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The hub URL put into join tokens.
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
