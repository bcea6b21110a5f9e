//! The vWorkspace cluster agent: enrollment, the hub tunnel, signed-intent
//! apply, the controllers that turn CRDs into Flux/Velero/etc. objects, and the
//! status stream back to the hub.
//!
//! Data flow of `run`: the admin server starts at once; a Lease elects one
//! active replica; the leader runs enrollment (Cluster object + token Secret
//! → credentials Secret), the tunnel (credentials → mTLS WebSocket → intents
//! verified and applied → acks), the status stream (watches → coalesced
//! statuses → tunnel) and the controllers. Losing the Lease stops all of it.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod apply;
pub mod args;
pub mod backoff;
pub mod cli;
pub mod cluster_status;
pub mod controllers;
pub mod creds;
pub mod enroll;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod recovery;
pub mod status;
pub mod tombstones;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use args::{Args, Command, NamespaceList};
pub use logging::Redactor;
pub use tunnel::ConnState;

/// Field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "vworkspace-agent";

/// Version reported in `Hello` and the Cluster status.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Resolves once `rx` turns true (or its sender is gone).
pub async fn signaled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Everything `run` needs, independent of how it was given (flags or tests).
#[derive(Clone, Debug)]
pub struct Config {
    /// Agent namespace.
    pub namespace: String,
    /// Name of the Cluster object.
    pub cluster_object: String,
    /// Name of the credentials Secret.
    pub credentials_secret: String,
    /// Tunnel URL override.
    pub hub_endpoint: Option<String>,
    /// Extra namespace allow-list for intents.
    pub allowed_namespaces: NamespaceList,
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
    /// Readiness grace period.
    pub ready_grace: Duration,
    /// Lease name.
    pub lease_name: String,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Lease renew interval.
    pub lease_renew: Duration,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Whether to run the controllers.
    pub controllers: bool,
    /// Controller settings (used when `controllers` is true).
    pub controller: controllers::Config,
}

impl args::RunArgs {
    /// The run configuration these flags describe.
    pub fn into_config(self) -> Result<Config, anyhow::Error> {
        let Self {
            kube: _,
            identity,
            hub_endpoint,
            allowed_namespaces,
            admin_addr,
            backoff_min,
            backoff_max,
            ready_grace,
            lease_name,
            lease_duration,
            lease_renew,
            pod_name,
            controllers,
            velero_namespace,
            operation_history_limit,
            operation_timeout,
            controller_resync,
            controller_concurrency,
            approval_secret_file,
        } = self;
        let approval_secret = match approval_secret_file {
            Some(path) => Some(std::fs::read(&path).map_err(|e| {
                anyhow::anyhow!("reading --approval-secret-file {}: {e}", path.display())
            })?),
            None => None,
        };
        let pod = pod_name
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("vworkspace-agent-{}", uuid::Uuid::new_v4()));
        Ok(Config {
            namespace: identity.namespace,
            cluster_object: identity.cluster_object,
            credentials_secret: identity.credentials_secret,
            hub_endpoint,
            allowed_namespaces: allowed_namespaces.clone(),
            admin_addr,
            backoff_min: backoff_min.0,
            backoff_max: backoff_max.0.max(backoff_min.0),
            ready_grace: ready_grace.0,
            lease_name,
            lease_duration: lease_duration.0,
            lease_renew: lease_renew
                .0
                .min(lease_duration.0 / 2)
                .max(Duration::from_millis(100)),
            identity: pod,
            controllers,
            controller: controllers::Config {
                allowed_namespaces: allowed_namespaces.0.clone(),
                velero_namespace,
                history_limit: operation_history_limit,
                approval_secret,
                default_operation_timeout: operation_timeout.0,
                resync: controller_resync.0,
                concurrency: controller_concurrency.max(1),
            },
        })
    }
}

/// Builds a Kubernetes client: in-cluster config, else the kubeconfig
/// (optionally a named context).
pub async fn kube_client(args: &args::KubeArgs) -> Result<kube::Client, anyhow::Error> {
    let config = match &args.context {
        Some(ctx) => {
            kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                context: Some(ctx.clone()),
                ..Default::default()
            })
            .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The admin server could not bind.
    #[error(transparent)]
    Bind(#[from] admin::BindError),
    /// A task that must not die did.
    #[error("the {0} task stopped unexpectedly")]
    TaskDied(&'static str),
}

/// A built agent: admin port bound, metrics registered, not yet running.
pub struct Agent {
    cfg: Config,
    client: kube::Client,
    redactor: Redactor,
    registry: Arc<Registry>,
    metrics: metrics::Metrics,
    controller_metrics: controllers::Metrics,
    listener: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    state_tx: watch::Sender<ConnState>,
    leader_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("admin_addr", &self.admin_addr)
            .field("identity", &self.cfg.identity)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Registers metrics and binds the admin server.
    pub async fn build(
        cfg: Config,
        client: kube::Client,
        redactor: Redactor,
    ) -> Result<Self, RunError> {
        let mut registry = Registry::default();
        let metrics = metrics::Metrics::register(&mut registry);
        let controller_metrics = controllers::Metrics::register(
            registry.sub_registry_with_prefix("vworkspace_agent_controllers"),
        );
        let listener = admin::bind(cfg.admin_addr).await?;
        let admin_addr = listener.local_addr().map_err(|source| admin::BindError {
            addr: cfg.admin_addr,
            source,
        })?;
        let (state_tx, _) = watch::channel(ConnState::Standby);
        let (leader_tx, _) = watch::channel(false);
        Ok(Self {
            cfg,
            client,
            redactor,
            registry: Arc::new(registry),
            metrics,
            controller_metrics,
            listener,
            admin_addr,
            state_tx,
            leader_tx,
        })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Watches the tunnel state.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state_tx.subscribe()
    }

    /// Watches leadership.
    pub fn leader(&self) -> watch::Receiver<bool> {
        self.leader_tx.subscribe()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
        let Self {
            cfg,
            client,
            redactor,
            registry,
            metrics,
            controller_metrics,
            listener,
            admin_addr,
            state_tx,
            leader_tx,
        } = self;
        tracing::info!(%admin_addr, identity = %cfg.identity, version = AGENT_VERSION, "Agent starting");
        let admin_state = admin::AdminState::new(
            registry,
            state_tx.subscribe(),
            cfg.ready_grace,
            shutdown.clone(),
        );
        let mut admin_task = tokio::spawn(admin::serve(
            listener,
            admin_state.clone(),
            shutdown.clone(),
        ));
        let tracker = tokio::spawn(admin_state.track(shutdown.clone()));
        // The Lease is vacated only after the leader work has stopped, so its
        // last writes (the Cluster status) still happen as the leader.
        let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
        let mut lease_task = tokio::spawn(lease::run(
            client.clone(),
            lease::LeaseConfig {
                name: cfg.lease_name.clone(),
                namespace: cfg.namespace.clone(),
                identity: cfg.identity.clone(),
                duration: cfg.lease_duration,
                renew: cfg.lease_renew,
            },
            leader_tx.clone(),
            metrics.clone(),
            lease_stop_rx,
        ));
        let mut leader = leader_tx.subscribe();
        let result = loop {
            // Standby until elected.
            tokio::select! {
                biased;
                _ = signaled(&mut shutdown) => break Ok(()),
                _ = &mut lease_task => break Err(RunError::TaskDied("lease")),
                _ = &mut admin_task => break Err(RunError::TaskDied("admin server")),
                _ = async { let _ = leader.wait_for(|l| *l).await; } => {}
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut work = tokio::spawn(leader_work(
                LeaderCtx {
                    leader: leader_tx.subscribe(),
                    cfg: cfg.clone(),
                    client: client.clone(),
                    redactor: redactor.clone(),
                    metrics: metrics.clone(),
                    controller_metrics: controller_metrics.clone(),
                    state_tx: state_tx.clone(),
                },
                stop_rx,
            ));
            let outcome = tokio::select! {
                biased;
                _ = signaled(&mut shutdown) => Some(Ok(())),
                _ = &mut lease_task => Some(Err(RunError::TaskDied("lease"))),
                _ = async { let _ = leader.wait_for(|l| !*l).await; } => None,
                _ = &mut work => Some(Err(RunError::TaskDied("leader"))),
            };
            // Stop writing at once; give the tunnel a moment to say goodbye.
            let _ = stop_tx.send(true);
            if tokio::time::timeout(Duration::from_secs(5), &mut work)
                .await
                .is_err()
            {
                work.abort();
            }
            state_tx.send_replace(ConnState::Standby);
            metrics.connection_state.set(0);
            match outcome {
                Some(r) => break r,
                None => tracing::warn!("Lost leadership; standing by"),
            }
        };
        // Now vacate the Lease; wait for it briefly.
        let _ = lease_stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
        tracker.abort();
        tracing::info!("Agent stopped");
        result
    }
}

/// What one leadership term needs.
struct LeaderCtx {
    leader: watch::Receiver<bool>,
    cfg: Config,
    client: kube::Client,
    redactor: Redactor,
    metrics: metrics::Metrics,
    controller_metrics: controllers::Metrics,
    state_tx: watch::Sender<ConnState>,
}

/// Everything only the leader runs. Returns when `stop` turns true.
async fn leader_work(ctx: LeaderCtx, stop: watch::Receiver<bool>) {
    let LeaderCtx {
        leader,
        cfg,
        client,
        redactor,
        metrics,
        controller_metrics,
        state_tx,
    } = ctx;
    let status_writer =
        cluster_status::ClusterStatusWriter::new(client.clone(), &cfg.cluster_object)
            .with_leader(leader);
    let (creds_tx, creds_rx) = watch::channel(None);
    let hub = status::StatusHub::new(metrics.clone());
    let enroller = enroll::Enroller {
        client: client.clone(),
        namespace: cfg.namespace.clone(),
        credentials_secret: cfg.credentials_secret.clone(),
        hub_endpoint: cfg.hub_endpoint.clone(),
        status: status_writer.clone(),
        metrics: metrics.clone(),
        redactor: redactor.clone(),
        creds_tx,
    };
    let tunnel = tunnel::Tunnel {
        client: client.clone(),
        namespace: cfg.namespace.clone(),
        credentials_secret: cfg.credentials_secret.clone(),
        hub_endpoint: cfg.hub_endpoint.clone(),
        allowed_namespaces: cfg.allowed_namespaces.clone(),
        backoff_min: cfg.backoff_min,
        backoff_max: cfg.backoff_max,
        metrics: metrics.clone(),
        status: hub.clone(),
        cluster_status: status_writer,
        state: state_tx,
        creds: creds_rx,
        redactor,
        tombstones: tombstones::Tombstones::new(client.clone(), &cfg.namespace),
    };
    let statuses = status::run(
        client.clone(),
        cfg.cluster_object.clone(),
        hub,
        stop.clone(),
    );
    let controllers = async {
        if !cfg.controllers {
            return;
        }
        let mut stop = stop.clone();
        let shutdown = async move { signaled(&mut stop).await };
        let run = controllers::run(
            client.clone(),
            cfg.controller.clone(),
            controller_metrics,
            shutdown,
        );
        if let Err(error) = run.await {
            // The tunnel keeps running: intents still land and statuses still flow.
            tracing::error!(%error, "Controllers stopped");
        }
    };
    tokio::join!(
        enroller.run(stop.clone()),
        tunnel.run(stop.clone()),
        statuses,
        controllers,
    );
}
