//! One leadership term: enrollment, the tunnel, the status stream and the
//! controllers, run together until the term's token is cancelled.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::controllers;
use crate::controllers::namespaces::NamespaceGate;
use crate::hub::cluster_status::ClusterStatusWriter;
use crate::hub::enroll::Enroller;
use crate::hub::metrics::Metrics;
use crate::hub::status::{self, Outbox};
use crate::hub::tombstones::Tombstones;
use crate::hub::tunnel::{ConnState, Tunnel};
use crate::process::logging::Redactor;

use super::Config;

/// What one leadership term needs.
pub(super) struct Term {
    pub(super) leader: watch::Receiver<bool>,
    pub(super) cfg: Config,
    pub(super) client: kube::Client,
    pub(super) redactor: Redactor,
    pub(super) metrics: Metrics,
    pub(super) controller_metrics: controllers::Metrics,
    pub(super) state_tx: watch::Sender<ConnState>,
}

/// Everything only the leader runs. Returns when `stop` is cancelled and all
/// of it has finished.
pub(super) async fn run(term: Term, stop: CancellationToken) {
    let Term {
        leader,
        cfg,
        client,
        redactor,
        metrics,
        controller_metrics,
        state_tx,
    } = term;
    let status_writer =
        ClusterStatusWriter::new(client.clone(), &cfg.cluster_object).with_leader(leader);
    let (creds_tx, creds_rx) = watch::channel(None);
    let outbox = Outbox::new(metrics.clone());
    // One Namespace cache for the intent path and the controllers.
    let (gate, gate_watch) = NamespaceGate::watch(client.clone(), cfg.allowed_namespaces.clone());
    let gate_watch = async {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = gate_watch => {}
        }
    };
    let enroller = Enroller {
        client: client.clone(),
        namespace: cfg.namespace.clone(),
        credentials_secret: cfg.credentials_secret.clone(),
        hub_endpoint: cfg.hub_endpoint.clone(),
        status: status_writer.clone(),
        metrics: metrics.clone(),
        redactor: redactor.clone(),
        creds_tx,
    };
    let tunnel = Tunnel {
        client: client.clone(),
        namespace: cfg.namespace.clone(),
        credentials_secret: cfg.credentials_secret.clone(),
        hub_endpoint: cfg.hub_endpoint.clone(),
        gate: gate.clone(),
        backoff_min: cfg.backoff_min,
        backoff_max: cfg.backoff_max,
        metrics: metrics.clone(),
        outbox: outbox.clone(),
        cluster_status: status_writer,
        state: state_tx,
        creds: creds_rx,
        redactor,
        tombstones: Tombstones::new(client.clone(), &cfg.namespace),
        finalize_instances: cfg.controllers,
        digest_hubs: Default::default(),
    };
    let statuses = status::run(
        client.clone(),
        cfg.cluster_object.clone(),
        outbox,
        stop.clone(),
    );
    let controllers = async {
        if !cfg.controllers {
            return;
        }
        let run = controllers::run(
            client.clone(),
            cfg.controller.clone(),
            controller_metrics,
            gate,
            stop.clone(),
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
        gate_watch,
    );
}
