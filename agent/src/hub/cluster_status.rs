//! Writes the Cluster object's status: one writer, serialized, read-merge-apply.
//!
//! Enrollment and the tunnel both change the Cluster status. Server-side
//! apply with one field manager removes fields that manager owned but left
//! out, so every write reads the live status, changes only what it means to,
//! and applies the whole status back; a mutex keeps the two writers from
//! interleaving. Nothing is written when nothing but timestamps would change.

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use vworkspace_crds::conditions::{self, Status as CondStatus, reasons};
use vworkspace_crds::{Cluster, ClusterPhase, ClusterStatus};

use crate::FIELD_MANAGER;

/// Serialized writer of one Cluster object's status.
#[derive(Clone, Debug)]
pub struct ClusterStatusWriter {
    api: Api<Cluster>,
    name: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    leader: Option<watch::Receiver<bool>>,
}

impl ClusterStatusWriter {
    /// A writer for the Cluster named `name`.
    pub fn new(client: kube::Client, name: impl Into<String>) -> Self {
        Self {
            api: Api::all(client),
            name: name.into(),
            lock: Arc::default(),
            leader: None,
        }
    }

    /// Writes only while `leader` is true (a replica that lost the Lease
    /// leaves the status to the new leader).
    pub fn with_leader(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// The Cluster API.
    pub fn api(&self) -> &Api<Cluster> {
        &self.api
    }

    /// The Cluster object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies `f` to the live status and writes it if it changed. Returns
    /// whether a write happened (`false` also when the Cluster does not exist).
    pub async fn update(&self, f: impl FnOnce(&mut ClusterStatus)) -> Result<bool, kube::Error> {
        let _guard = self.lock.lock().await;
        if self.leader.as_ref().is_some_and(|l| !*l.borrow()) {
            tracing::debug!("Not the leader; Cluster status left alone");
            return Ok(false);
        }
        let Some(cluster) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let old = cluster.status.clone().unwrap_or_default();
        let mut new = old.clone();
        f(&mut new);
        new.observed_generation = cluster.metadata.generation;
        new.agent_version = Some(crate::AGENT_VERSION.to_owned());
        if same_status(&old, &new) {
            return Ok(false);
        }
        let body = serde_json::json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1",
            "kind": "Cluster",
            "status": new,
        });
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        Ok(true)
    }

    /// Phase and Connected/Disconnected conditions for a live tunnel.
    pub async fn connected(&self) -> Result<bool, kube::Error> {
        self.update(|s| {
            s.phase = Some(ClusterPhase::Connected);
            s.last_heartbeat = Some(conditions::now());
            let g = s.observed_generation;
            conditions::set_condition(
                &mut s.conditions,
                conditions::connected(
                    CondStatus::True,
                    reasons::TUNNEL_CONNECTED,
                    "the mTLS tunnel to the hub is up",
                    g,
                ),
            );
            conditions::set_condition(
                &mut s.conditions,
                conditions::disconnected(
                    CondStatus::False,
                    reasons::CONNECTED,
                    "the mTLS tunnel to the hub is up",
                    g,
                ),
            );
            conditions::set_condition(
                &mut s.conditions,
                conditions::authenticated(
                    CondStatus::True,
                    reasons::CREDENTIAL_ACCEPTED,
                    "the hub accepted the client certificate",
                    g,
                ),
            );
        })
        .await
    }

    /// Phase and conditions after the tunnel was lost (or could not be opened).
    pub async fn disconnected(&self, message: &str, rejected: bool) -> Result<bool, kube::Error> {
        self.disconnected_with(message, rejected, false).await
    }

    /// As [`Self::disconnected`]; with `keep_hub_ca_unknown` a `Connected`
    /// condition with reason `HubCaUnknown` (set by certificate recovery,
    /// which found the hub's CA unknown) stays as it is.
    pub async fn disconnected_with(
        &self,
        message: &str,
        rejected: bool,
        keep_hub_ca_unknown: bool,
    ) -> Result<bool, kube::Error> {
        let message = message.to_owned();
        self.update(move |s| {
            if keep_hub_ca_unknown
                && conditions::find(&s.conditions, conditions::types::CONNECTED)
                    .is_some_and(|c| c.reason == reasons::HUB_CA_UNKNOWN)
            {
                return;
            }
            // Enrollment owns Pending/Registering/Error until the first connection.
            if matches!(
                s.phase,
                Some(ClusterPhase::Connected | ClusterPhase::Disconnected) | None
            ) || rejected
            {
                s.phase = Some(ClusterPhase::Disconnected);
            }
            let g = s.observed_generation;
            conditions::set_condition(
                &mut s.conditions,
                conditions::connected(
                    CondStatus::False,
                    reasons::TUNNEL_DISCONNECTED,
                    message.clone(),
                    g,
                ),
            );
            conditions::set_condition(
                &mut s.conditions,
                conditions::disconnected(
                    CondStatus::True,
                    reasons::NO_RECENT_ROUND_TRIP,
                    message.clone(),
                    g,
                ),
            );
            if rejected {
                conditions::set_condition(
                    &mut s.conditions,
                    conditions::authenticated(
                        CondStatus::False,
                        reasons::CREDENTIAL_REJECTED,
                        message,
                        g,
                    ),
                );
            }
        })
        .await
    }

    /// Phase and conditions when the hub's server certificate comes from a
    /// CA the cluster does not trust (`Connected=False`, reason `HubCaUnknown`).
    pub async fn hub_ca_unknown(&self, message: &str) -> Result<bool, kube::Error> {
        let message = message.to_owned();
        self.update(move |s| {
            if matches!(
                s.phase,
                Some(ClusterPhase::Connected | ClusterPhase::Disconnected) | None
            ) {
                s.phase = Some(ClusterPhase::Disconnected);
            }
            let g = s.observed_generation;
            conditions::set_condition(
                &mut s.conditions,
                conditions::connected(
                    CondStatus::False,
                    reasons::HUB_CA_UNKNOWN,
                    message.clone(),
                    g,
                ),
            );
            conditions::set_condition(
                &mut s.conditions,
                conditions::disconnected(
                    CondStatus::True,
                    reasons::NO_RECENT_ROUND_TRIP,
                    message,
                    g,
                ),
            );
        })
        .await
    }

    /// Records a successful round trip (the tunnel is up).
    pub async fn heartbeat(&self) -> Result<bool, kube::Error> {
        self.update(|s| s.last_heartbeat = Some(conditions::now()))
            .await
    }
}

fn same_status(a: &ClusterStatus, b: &ClusterStatus) -> bool {
    let strip = |s: &ClusterStatus| ClusterStatus {
        conditions: Vec::new(),
        ..s.clone()
    };
    strip(a) == strip(b) && conditions::eq_ignoring_time(&a.conditions, &b.conditions)
}
