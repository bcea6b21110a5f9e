//! Enrollment: Cluster object + token Secret → credentials Secret.
//!
//! The reconcile loop watches the cluster-scoped Cluster object and the
//! Secrets of the agent's namespace. When the token it finds differs from the
//! one the current credentials came from (or there are no credentials), it
//! generates a key in the cluster, sends a CSR with the token to the hub's
//! enrollment endpoint over TLS that trusts only the CA pinned in the token,
//! stores key, certificate, CA bundle and signing keys in one Secret owned by
//! the Cluster, and publishes the new identity to the tunnel.
//!
//! The request itself (key, CSR, pinned-CA TLS, answer checks) is in
//! [`request`]; this file is the reconcile loop around it.

mod request;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_crds::cluster::{CredentialStatus, NamespacedName};
use vworkspace_crds::conditions::{self, Status as CondStatus, reasons};
use vworkspace_crds::well_known::values::REGISTRATION_TOKEN_KEY;
use vworkspace_crds::{Cluster, ClusterPhase};
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{JoinToken, unix_now};

use crate::hub::cluster_status::ClusterStatusWriter;
use crate::hub::creds::{self, Credentials, CredsError};
use crate::hub::metrics::Metrics;
use crate::process::logging::Redactor;

pub use request::{
    BadResponse, ConnectCause, EnrollFailure, KeyAndCsr, check_response, generate_key_and_csr,
    request_enrollment,
};
pub(crate) use request::{host_port, refusal};

/// Periodic re-check even without a watch event.
const RESYNC: Duration = Duration::from_secs(60);

// === the reconcile loop ===

/// Everything enrollment needs.
#[derive(Clone)]
pub struct Enroller {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Agent namespace.
    pub namespace: String,
    /// Credentials Secret name.
    pub credentials_secret: String,
    /// Tunnel URL override.
    pub hub_endpoint: Option<String>,
    /// Cluster status writer.
    pub status: ClusterStatusWriter,
    /// Metrics.
    pub metrics: Metrics,
    /// Secrets to keep out of logs.
    pub redactor: Redactor,
    /// Publishes the identity the tunnel should use.
    pub creds_tx: watch::Sender<Option<Arc<Credentials>>>,
}

enum Next {
    Idle,
    Retry(Duration),
}

impl Enroller {
    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut token_secret: Option<String> = None;
        let mut triggers = self.triggers(token_secret.as_deref());
        let mut failed: Option<(String, u32)> = None;
        loop {
            let seen = token_secret.clone();
            // An enrollment in flight is dropped on shutdown; the next leader
            // starts it again.
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                next = self.reconcile(&mut failed, &mut token_secret) => next,
            };
            if token_secret != seen {
                // The Cluster names another token Secret: watch that one instead.
                triggers = self.triggers(token_secret.as_deref());
            }
            let (wait, wake_on_events) = match next {
                Next::Idle => (RESYNC, true),
                // Backing off: our own status write is a watch event too, so
                // events must not cut the backoff short.
                Next::Retry(d) => (d, false),
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = &mut sleep => break,
                    ev = triggers.next() => {
                        if ev.is_none() { return; }
                        if wake_on_events {
                            // Coalesce a burst of events into one reconcile.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Events that make enrollment look again: the Cluster object, our
    /// credentials Secret and the token Secret the Cluster names. Each is
    /// watched by name, because the chart grants Secrets by name only (a
    /// namespace-wide Secret watch would be refused, and would read other
    /// Secrets' values for no reason).
    fn triggers(&self, token_secret: Option<&str>) -> futures::stream::BoxStream<'static, ()> {
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let clusters: Api<Cluster> = Api::all(self.client.clone());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut streams = vec![
            watcher(clusters, by_name(self.status.name()))
                .default_backoff()
                .map(|_| ())
                .boxed(),
            watcher(secrets.clone(), by_name(&self.credentials_secret))
                .default_backoff()
                .map(|_| ())
                .boxed(),
        ];
        if let Some(name) = token_secret.filter(|n| *n != self.credentials_secret) {
            streams.push(
                watcher(secrets, by_name(name))
                    .default_backoff()
                    .map(|_| ())
                    .boxed(),
            );
        }
        futures::stream::select_all(streams).boxed()
    }

    async fn reconcile(
        &self,
        failed: &mut Option<(String, u32)>,
        token_secret: &mut Option<String>,
    ) -> Next {
        match self.try_reconcile(failed, token_secret).await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "Enrollment reconcile failed");
                Next::Retry(Duration::from_secs(5))
            }
        }
    }

    async fn try_reconcile(
        &self,
        failed: &mut Option<(String, u32)>,
        token_secret: &mut Option<String>,
    ) -> Result<Next, kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(cluster) = self.status.api().get_opt(self.status.name()).await? else {
            tracing::info!(cluster = %self.status.name(), "Waiting for the Cluster object");
            self.creds_tx.send_replace(None);
            return Ok(Next::Idle);
        };
        *token_secret = cluster
            .spec
            .registration_token_secret_ref
            .as_ref()
            .map(|r| r.name.clone());
        let token = self.resolve_token(&cluster, &secrets).await?;
        let existing =
            match Credentials::load(&secrets, &self.namespace, &self.credentials_secret).await {
                Ok(c) => Some(c),
                Err(CredsError::Missing { .. }) => None,
                Err(CredsError::Kube(e)) => return Err(e),
                Err(error) => {
                    tracing::warn!(%error, "Ignoring unusable credentials Secret");
                    None
                }
            };
        if let Some(c) = &existing {
            self.redactor.register(&c.key_pem);
        }
        let fingerprint = token.as_deref().map(creds::token_fingerprint);
        let up_to_date = match (&existing, &fingerprint) {
            (Some(c), Some(fp)) => c.token_fingerprint.as_deref().is_none_or(|f| f == fp),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if up_to_date {
            let c = existing.clone().expect("up_to_date implies credentials");
            // --- certificate recovery (crate::hub::recovery) ---
            let outcome = crate::hub::recovery::check(
                &c,
                self.hub_endpoint.as_deref(),
                &secrets,
                &self.credentials_secret,
                owner_ref(&cluster),
                &self.status,
            )
            .await?;
            let next = match outcome {
                crate::hub::recovery::Outcome::Valid(left) => match left {
                    Some(d) if d < RESYNC => Next::Retry(d),
                    _ => Next::Idle,
                },
                crate::hub::recovery::Outcome::Recovered(new) => {
                    // Same identity, new certificate: wake the tunnel anyway.
                    self.redactor.register(&new.key_pem);
                    self.creds_tx.send_replace(Some(new));
                    return Ok(Next::Idle);
                }
                crate::hub::recovery::Outcome::Retry(d) => Next::Retry(d),
                crate::hub::recovery::Outcome::GaveUp => Next::Idle,
            };
            // --- end certificate recovery ---
            self.publish(c);
            return Ok(next);
        }
        let Some(token) = token else {
            self.status
                .update(|s| {
                    s.phase = Some(ClusterPhase::Pending);
                    let g = s.observed_generation;
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::authenticated(
                            CondStatus::False,
                            reasons::TOKEN_SECRET_MISSING,
                            "no join token: set spec.registrationTokenSecretRef to a Secret in the agent namespace",
                            g,
                        ),
                    );
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::connected(
                            CondStatus::False,
                            reasons::REGISTRATION_PENDING,
                            "waiting for a join token",
                            g,
                        ),
                    );
                })
                .await?;
            return Ok(Next::Idle);
        };
        let fp = fingerprint.unwrap_or_default();
        // A token that failed for good is not retried until it changes.
        if let Some((f, attempts)) = failed.as_ref()
            && *f == fp
            && *attempts == u32::MAX
        {
            if let Some(c) = existing {
                self.publish(c);
            }
            return Ok(Next::Idle);
        }
        self.status
            .update(|s| {
                if existing.is_none() {
                    s.phase = Some(ClusterPhase::Registering);
                }
            })
            .await?;
        match self.enroll(&cluster, &token, &fp, &secrets).await {
            Ok(c) => {
                *failed = None;
                self.metrics.enrollment("ok");
                let ns = self.namespace.clone();
                let name = self.credentials_secret.clone();
                let not_after = c.not_after().and_then(time_from_unix);
                let (cid, org) = (c.cluster_id.clone(), c.org.clone());
                self.status
                    .update(|s| {
                        if s.phase != Some(ClusterPhase::Connected) {
                            s.phase = Some(ClusterPhase::Registering);
                        }
                        s.observed_token = Some(fp.clone());
                        s.cluster_id = Some(cid);
                        s.org = Some(org);
                        s.certificate_not_after = not_after;
                        s.credentials_secret_ref = Some(NamespacedName {
                            name: name.clone(),
                            namespace: ns.clone(),
                        });
                        s.credential_status = Some(CredentialStatus {
                            secret_name: Some(name),
                            secret_namespace: Some(ns),
                            registered_at: Some(conditions::now()),
                            registration_token_consumed: Some(true),
                        });
                        let g = s.observed_generation;
                        conditions::set_condition(
                            &mut s.conditions,
                            conditions::authenticated(
                                CondStatus::True,
                                reasons::REGISTRATION_COMPLETE,
                                "the hub issued a client certificate",
                                g,
                            ),
                        );
                    })
                    .await?;
                if cluster.spec.cluster_id.as_deref().is_none_or(str::is_empty) {
                    self.fill_cluster_id(&c.cluster_id).await;
                }
                tracing::info!(cluster_id = %escape(&c.cluster_id, 253), org = %escape(&c.org, 253), "Enrolled with the hub");
                self.publish(c);
                Ok(Next::Idle)
            }
            Err(error) => {
                let retryable = error.is_retryable();
                self.metrics.enrollment(error.reason());
                let attempts = match failed.as_ref() {
                    Some((f, n)) if *f == fp => n.saturating_add(1),
                    _ => 1,
                };
                *failed = Some((fp, if retryable { attempts } else { u32::MAX }));
                let delay = retryable.then(|| {
                    crate::hub::backoff::after_failure(
                        error.retry_after(),
                        Duration::from_secs(2),
                        Duration::from_secs(300),
                        attempts,
                    )
                });
                let paced = error.is_paced();
                let message = match (paced, delay) {
                    // The hub is spreading a crowd of enrollments: expected
                    // during a fleet-wide token re-issue, so said as such.
                    (true, Some(d)) => {
                        tracing::info!(
                            delay_secs = d.as_secs(),
                            attempt = attempts,
                            "Enrollment paced by the hub; retrying when it asked"
                        );
                        format!(
                            "the hub is pacing enrollments and asked to retry in {} s; retrying in {} s (attempt {attempts})",
                            error.retry_after().unwrap_or(d).as_secs(),
                            d.as_secs()
                        )
                    }
                    _ => {
                        tracing::warn!(%error, retryable, "Enrollment failed");
                        error.to_string()
                    }
                };
                let reason = error.reason();
                let had_creds = existing.is_some();
                self.status
                    .update(|s| {
                        let g = s.observed_generation;
                        if !had_creds {
                            s.phase = Some(if paced {
                                ClusterPhase::Registering
                            } else {
                                ClusterPhase::Error
                            });
                            conditions::set_condition(
                                &mut s.conditions,
                                conditions::connected(
                                    CondStatus::False,
                                    reasons::REGISTRATION_PENDING,
                                    if paced {
                                        "enrollment is waiting for its turn at the hub"
                                    } else {
                                        "enrollment has not completed"
                                    },
                                    g,
                                ),
                            );
                        }
                        conditions::set_condition(
                            &mut s.conditions,
                            conditions::authenticated(CondStatus::False, reason, message, g),
                        );
                    })
                    .await?;
                if let Some(c) = existing {
                    self.publish(c);
                }
                Ok(delay.map_or(Next::Idle, Next::Retry))
            }
        }
    }

    /// Records the issued id in `spec.clusterId` when it is empty, as upstream
    /// does. Not forced: an id someone else set is left alone.
    async fn fill_cluster_id(&self, id: &str) {
        let body = serde_json::json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": self.status.name()},
            "spec": {"clusterId": id},
        });
        let pp = kube::api::PatchParams::apply(crate::FIELD_MANAGER);
        if let Err(error) = self
            .status
            .api()
            .patch(self.status.name(), &pp, &kube::api::Patch::Apply(body))
            .await
        {
            tracing::warn!(%error, "Failed to record spec.clusterId");
        }
    }

    fn publish(&self, c: Arc<Credentials>) {
        if let Some(na) = c.not_after() {
            self.metrics.cert_expiry.set(na);
        }
        self.creds_tx.send_if_modified(|cur| {
            let same = cur.as_ref().is_some_and(|old| {
                old.cluster_id == c.cluster_id
                    && old.token_fingerprint == c.token_fingerprint
                    && old.tunnel_url == c.tunnel_url
            });
            if !same {
                *cur = Some(c);
            }
            !same
        });
    }

    async fn resolve_token(
        &self,
        cluster: &Cluster,
        secrets: &Api<Secret>,
    ) -> Result<Option<String>, kube::Error> {
        if let Some(r) = &cluster.spec.registration_token_secret_ref {
            let key = r.key.as_deref().unwrap_or(REGISTRATION_TOKEN_KEY);
            let token = secrets
                .get_opt(&r.name)
                .await?
                .and_then(|s| s.data)
                .and_then(|d| d.get(key).cloned())
                .and_then(|b| String::from_utf8(b.0).ok())
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
            if let Some(t) = &token {
                self.redactor.register(t);
            }
            return Ok(token);
        }
        let inline = cluster
            .spec
            .registration_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if let Some(t) = &inline {
            self.redactor.register(t);
        }
        Ok(inline)
    }

    async fn enroll(
        &self,
        cluster: &Cluster,
        raw: &str,
        fingerprint: &str,
        secrets: &Api<Secret>,
    ) -> Result<Arc<Credentials>, EnrollFailure> {
        let token = JoinToken::parse(raw, unix_now())?;
        let claims = token.claims().clone();
        let kc = generate_key_and_csr(&claims.cluster)?;
        self.redactor.register(&kc.key_pem);
        // Claims of an unverified token: escaped like any peer text.
        tracing::info!(
            hub = %escape(&claims.hub_url, 253),
            cluster = %escape(&claims.cluster, 253),
            org = %escape(&claims.org, 253),
            jti = %escape(&claims.jti, 253),
            "Enrolling with the hub"
        );
        let resp = request_enrollment(&token, &kc.csr_pem).await?;
        check_response(&resp, &claims.ca_sha256, &kc.spki_der)?;
        let tunnel_url = match &self.hub_endpoint {
            Some(h) => tunnel_url_from(h),
            None => resp.tunnel_url.clone(),
        };
        let c = Credentials {
            key_pem: kc.key_pem,
            cert_pem: resp.certificate_pem,
            ca_pem: resp.ca_bundle_pem,
            signing_keys: resp.signing_keys,
            cluster_id: resp.cluster_id,
            org: resp.org,
            tunnel_url,
            hub_url: claims.hub_url,
            token_fingerprint: Some(fingerprint.to_owned()),
            received_at: Some(vworkspace_protocol::unix_now()),
        };
        c.store(secrets, &self.credentials_secret, owner_ref(cluster))
            .await?;
        Ok(Arc::new(c))
    }
}

/// `wss://HOST:PORT/v1/tunnel` from an `https://` or `wss://` base URL.
pub fn tunnel_url_from(base: &str) -> String {
    if base.contains(vworkspace_protocol::TUNNEL_PATH) {
        return base.to_owned();
    }
    let rest = base
        .trim_end_matches('/')
        .trim_start_matches("https://")
        .trim_start_matches("wss://");
    format!("wss://{rest}{}", vworkspace_protocol::TUNNEL_PATH)
}

/// Controller owner reference to the Cluster object.
pub fn owner_ref(cluster: &Cluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// A Unix time as a metav1 Time.
pub fn time_from_unix(secs: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

#[cfg(test)]
mod tests {
    use super::request::host_port;
    use super::*;

    #[test]
    fn tunnel_urls_are_derived_from_hub_urls() {
        assert_eq!(
            tunnel_url_from("https://hub.example:8443/"),
            "wss://hub.example:8443/v1/tunnel"
        );
        assert_eq!(tunnel_url_from("wss://h/v1/tunnel"), "wss://h/v1/tunnel");
    }

    #[test]
    fn a_hub_url_without_a_port_gives_a_tunnel_url_without_one_on_443() {
        assert_eq!(
            tunnel_url_from("https://hub.example"),
            "wss://hub.example/v1/tunnel"
        );
        assert_eq!(
            host_port(&tunnel_url_from("https://hub.example"), 443),
            Some(("hub.example".into(), 443))
        );
    }
}
