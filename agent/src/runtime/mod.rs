//! One agent process: the admin server, the Lease, and the leader term.
//!
//! Data flow of [`Agent::run`]: the admin server starts at once; the Lease
//! task publishes leadership; while this replica leads, [`leader`] runs
//! enrollment, the tunnel, the status stream and the controllers. Shutdown is
//! one [`CancellationToken`]: cancelling it stops the leader term, whose tasks
//! are all awaited, then the Lease is vacated and the admin server stops.

pub mod admin;
pub mod cli;
mod leader;
pub mod lease;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NamespaceList;
use crate::controllers;
use crate::hub::metrics::Metrics;
use crate::hub::tunnel::ConnState;
use crate::process::args::{KubeArgs, RunArgs};
use crate::process::logging::Redactor;

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

// === impl RunArgs ===

impl RunArgs {
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
            allowed_namespaces,
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
pub async fn kube_client(args: &KubeArgs) -> Result<kube::Client, anyhow::Error> {
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
    metrics: Metrics,
    controller_metrics: controllers::Metrics,
    listener: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    state_tx: watch::Sender<ConnState>,
    leader_tx: watch::Sender<bool>,
}

// === impl Agent ===

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
        let metrics = Metrics::register(&mut registry);
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

    /// Runs until `shutdown` is cancelled. Returns only after every task it
    /// started has finished.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
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
        tracing::info!(%admin_addr, identity = %cfg.identity, version = crate::AGENT_VERSION, "Agent starting");
        // Everything below stops when `shutdown` is cancelled, and also when
        // this future is dropped (an aborted task), as a killed process would.
        let run_token = shutdown.child_token();
        let _stop_on_drop = run_token.clone().drop_guard();
        // The admin server outlives the leader term and the Lease; it stops
        // last, also when the agent stops with an error.
        let admin_stop = run_token.child_token();
        let tasks = TaskTracker::new();
        let admin_state = admin::AdminState::new(
            registry,
            state_tx.subscribe(),
            cfg.ready_grace,
            admin_stop.clone(),
        );
        let mut admin_task = tokio::spawn(admin::serve(
            listener,
            admin_state.clone(),
            admin_stop.clone(),
        ));
        tasks.spawn(admin_state.track(admin_stop.clone()));
        // The Lease is vacated only after the leader work has stopped, so its
        // last writes (the Cluster status) still happen as the leader.
        let lease_stop = CancellationToken::new();
        let _vacate_on_drop = lease_stop.clone().drop_guard();
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
            lease_stop.clone(),
        ));
        let mut leader = leader_tx.subscribe();
        let result = loop {
            // Standby until elected.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = &mut lease_task => break Err(RunError::TaskDied("lease")),
                _ = &mut admin_task => break Err(RunError::TaskDied("admin server")),
                _ = async { let _ = leader.wait_for(|l| *l).await; } => {}
            }
            let stop = run_token.child_token();
            let mut work = tokio::spawn(leader::run(
                leader::Term {
                    leader: leader_tx.subscribe(),
                    cfg: cfg.clone(),
                    client: client.clone(),
                    redactor: redactor.clone(),
                    metrics: metrics.clone(),
                    controller_metrics: controller_metrics.clone(),
                    state_tx: state_tx.clone(),
                },
                stop.clone(),
            ));
            let outcome = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Some(Ok(())),
                _ = &mut lease_task => Some(Err(RunError::TaskDied("lease"))),
                _ = async { let _ = leader.wait_for(|l| !*l).await; } => None,
                _ = &mut work => Some(Err(RunError::TaskDied("leader"))),
            };
            // Stop writing at once; the tunnel says goodbye and every task of
            // the term finishes before the next term or the Lease release.
            stop.cancel();
            if !work.is_finished() {
                let _ = (&mut work).await;
            }
            state_tx.send_replace(ConnState::Standby);
            metrics.connection_state.set(0);
            match outcome {
                Some(r) => break r,
                None => tracing::warn!("Lost leadership; standing by"),
            }
        };
        // Now vacate the Lease, then stop the admin server.
        lease_stop.cancel();
        if !lease_task.is_finished() {
            let _ = lease_task.await;
        }
        admin_stop.cancel();
        if !admin_task.is_finished() {
            let _ = admin_task.await;
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("Agent stopped");
        result
    }
}
