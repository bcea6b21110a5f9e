//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several
//! replicas only one enrolls, holds the tunnel and writes.
//!
//! Client-go's algorithm: a Lease whose record has not changed for
//! `lease_duration` (measured on this replica's monotonic clock since it
//! observed the record, so clock skew between nodes does not matter) may be
//! taken over; writes use the Lease's `resourceVersion`, so two replicas
//! racing for it cannot both win. The leader steps down by itself when it
//! has not renewed for `lease_duration - renew` (before anyone could take
//! over), and vacates the Lease on shutdown.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::metrics::Metrics;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the agent's).
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a holder stays leader without renewing.
    pub duration: Duration,
    /// How often the leader renews (and others retry).
    pub renew: Duration,
}

/// Runs the election until `shutdown`, publishing leadership on `leader`.
pub async fn run(
    client: kube::Client,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<(String, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    let set = |v: bool| {
        metrics.leader.set(i64::from(v));
        leader.send_if_modified(|cur| {
            let changed = *cur != v;
            *cur = v;
            changed
        });
    };
    loop {
        let is_leader = *leader.borrow();
        match try_acquire_or_renew(&api, &cfg, &mut observed).await {
            Ok(true) => {
                if !is_leader {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "Became the leader");
                }
                last_renew = Some(Instant::now());
                set(true);
            }
            Ok(false) => {
                if is_leader {
                    tracing::warn!(lease = %cfg.name, "Lost the Lease to another replica");
                }
                last_renew = None;
                set(false);
            }
            Err(error) => {
                tracing::warn!(%error, lease = %cfg.name, "Lease update failed");
                let deadline = cfg.duration.saturating_sub(cfg.renew);
                if is_leader && last_renew.is_none_or(|t| t.elapsed() >= deadline) {
                    tracing::warn!(lease = %cfg.name, "Stepping down: could not renew in time");
                    set(false);
                }
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cfg.renew) => {}
        }
    }
    if *leader.borrow() {
        set(false);
        if let Err(error) = vacate(&api, &cfg).await {
            tracing::warn!(%error, "Failed to vacate the Lease");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round: returns whether this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = format!(
        "{:?}/{:?}",
        holder,
        spec.renew_time.as_ref().map(|t| t.0.to_string())
    );
    let observed_at = match observed {
        Some((r, at)) if *r == record => *at,
        _ => {
            let at = Instant::now();
            *observed = Some((record, at));
            at
        }
    };
    let mine = holder.as_deref() == Some(cfg.identity.as_str());
    let expired = holder.is_none() || observed_at.elapsed() >= cfg.duration;
    if !mine && !expired {
        return Ok(false);
    }
    let mut new = spec;
    if !mine {
        new.holder_identity = Some(cfg.identity.clone());
        new.acquire_time = Some(now());
        new.lease_transitions = Some(new.lease_transitions.unwrap_or(0) + 1);
    }
    new.renew_time = Some(now());
    new.lease_duration_seconds = Some(duration_secs);
    lease.spec = Some(new);
    // `replace` carries the resourceVersion we read: a concurrent writer makes it fail with 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn vacate(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
