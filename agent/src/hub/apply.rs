//! Intent apply: verify, gate, validate, write, and say what happened.
//!
//! Every intent is verified completely (signature, key id, cluster and org,
//! expiry) before anything else. The per-object version already applied is
//! read from the object itself (an annotation the agent writes), so a
//! restarted agent with no local disk still refuses replays: the same
//! version again is a `noop` (at-least-once redelivery), an older one is
//! `replayed`. Only then the namespace gate and the spec checks run, and the
//! object is written by server-side apply with one field manager. Nothing is
//! written for a rejected intent.
//!
//! The API requests of one intent share a deadline ([`INTENT_BUDGET`]); each
//! attempt is bounded ([`CALL_TIMEOUT`]) and a transient failure (no answer,
//! no connection, 429, 5xx) is sent again with backoff until the deadline.
//! The client has no read timeout of its own (its watches stay open for
//! minutes) and retries a 503 with a backoff that grows to minutes, and a
//! restarting API server refuses connections for a while: without the retry
//! an intent in flight during a restart would be acked `apply_failed` at once
//! (which the hub resends only on its next connection), and without the bound
//! it could stay unacked for minutes. A request that still fails at the
//! deadline makes the intent `apply_failed`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use vworkspace_crds::well_known::{annotations, finalizers, labels};
use vworkspace_crds::{ApplicationInstance, ApplicationInstanceSpec, Operation, OperationSpec};
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{
    IntentAck, IntentAction, IntentOutcome, KeyRing, Limits, ObjectKind, ObjectRef, Rejection,
    RejectionCode, SignedIntent, VerifyContext, unix_now,
};

use crate::FIELD_MANAGER;
use crate::controllers::namespaces::NamespaceGate;
use crate::hub::metrics::Metrics;
use crate::hub::tombstones::Tombstones;

/// What the applier knows about this cluster.
#[derive(Clone)]
pub struct Applier {
    /// Kubernetes client.
    pub client: kube::Client,
    /// This cluster's id (from the credentials).
    pub cluster_id: String,
    /// This cluster's org.
    pub org: String,
    /// Trusted intent-signing keys.
    pub keys: KeyRing,
    /// The namespace gate (shared with the controllers).
    pub gate: NamespaceGate,
    /// Limits of the connection.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// Versions of deleted objects.
    pub tombstones: Tombstones,
    /// Whether applied ApplicationInstances carry the controller's finalizer
    /// (saving the controller that write); never without the controllers,
    /// which alone remove it.
    pub finalize_instances: bool,
}

/// The outcome of one intent before it is wrapped in an ack.
#[derive(Debug)]
enum Verdict {
    Applied,
    Noop,
    Rejected(RejectionCode, String),
}

impl Applier {
    /// Handles one intent end to end and returns the ack to send.
    pub async fn handle(&self, intent_seq: u64, intent: &SignedIntent) -> IntentAck {
        let peeked = intent.peek_payload().ok();
        let verdict = self.verdict(intent, peeked.as_ref()).await;
        let outcome = match &verdict {
            Verdict::Applied => {
                self.metrics.intent("applied", "");
                IntentOutcome::Applied
            }
            Verdict::Noop => {
                self.metrics.intent("noop", "");
                IntentOutcome::Noop
            }
            Verdict::Rejected(code, message) => {
                self.metrics.intent("rejected", code.as_str());
                // Intent ids, names and messages come from the (unverified)
                // payload: escaped so they cannot forge log lines.
                tracing::warn!(
                    intent = %escape(peeked.as_ref().map(|p| p.intent_id.as_str()).unwrap_or(""), 64),
                    object = %escape(&peeked.as_ref().map(|p| p.object.to_string()).unwrap_or_default(), 300),
                    code = code.as_str(),
                    message = %escape(message, 500),
                    "Intent rejected"
                );
                IntentOutcome::Rejected {
                    code: code.as_str().to_owned(),
                    message: message.clone(),
                }
            }
        };
        if let (Verdict::Applied, Some(p)) = (&verdict, &peeked) {
            tracing::info!(intent = %escape(&p.intent_id, 64), object = %escape(&p.object.to_string(), 300), version = p.version, "Intent applied");
        }
        IntentAck {
            intent_id: peeked
                .as_ref()
                .map(|p| p.intent_id.clone())
                .unwrap_or_default(),
            intent_seq,
            object: peeked.as_ref().map(|p| p.object.clone()),
            version: peeked.as_ref().map(|p| p.version),
            outcome,
        }
    }

    async fn verdict(
        &self,
        intent: &SignedIntent,
        peeked: Option<&vworkspace_protocol::IntentPayload>,
    ) -> Verdict {
        let reject = |r: Rejection| Verdict::Rejected(r.code(), r.to_string());
        let ctx = VerifyContext::new(&self.cluster_id, unix_now())
            .with_org(&self.org)
            .with_limits(&self.limits);
        // Signature, key, cluster, org and times first; the version check below
        // needs the object, which is only read for an intent that verified.
        let verified = match self.keys.verify(intent, &ctx) {
            Ok(v) => v,
            Err(r) => return reject(r),
        };
        debug_assert_eq!(
            peeked.map(|p| &p.intent_id),
            Some(&verified.payload.intent_id)
        );
        let p = verified.payload;
        let deadline = Instant::now() + INTENT_BUDGET;
        let Some(api) = api_for(&self.client, &p.object) else {
            return Verdict::Rejected(
                RejectionCode::Forbidden,
                format!("{} objects cannot be written by intent", p.object.kind),
            );
        };
        let live = match call("reading the object", deadline, || {
            api.get_opt(&p.object.name)
        })
        .await
        {
            Ok(o) => o,
            Err(e) => return apply_failed("reading the object", &e),
        };
        let (applied, applied_id) = match &live {
            Some(o) => (applied_version(o), applied_intent_id(o)),
            None => match call("reading the tombstones", deadline, || {
                self.tombstones.get(&p.object)
            })
            .await
            {
                Ok(Some((v, id))) => (Some(v), Some(id)),
                Ok(None) => (None, None),
                Err(e) => return apply_failed("reading the tombstones", &e),
            },
        };
        match applied {
            // The same intent delivered again (at-least-once): nothing to do.
            Some(a) if p.version == a && applied_id.as_deref() == Some(p.intent_id.as_str()) => {
                return Verdict::Noop;
            }
            Some(a) if p.version <= a => {
                return reject(Rejection::Replayed {
                    version: p.version,
                    applied: a,
                });
            }
            _ => {}
        }
        // The cache first; a namespace it does not hold is read once from
        // the API server, since it may have been created a moment ago.
        let ns = p.object.namespace.as_str();
        let ns_labels = match self.gate.cached_labels(ns).await {
            Some(l) => Some(l),
            None => match call("reading the namespace", deadline, || {
                self.gate.read_labels(ns)
            })
            .await
            {
                Ok(l) => l,
                Err(e) => return apply_failed("reading the namespace", &e),
            },
        };
        if let Some(why) = self.gate.refusal(ns, ns_labels.as_ref()) {
            return Verdict::Rejected(RejectionCode::Forbidden, why.to_string());
        }
        match p.action {
            IntentAction::Delete => {
                // Remember the version first: an older apply must not bring the object back.
                if let Err(e) = call("recording the deletion", deadline, || {
                    self.tombstones.record(&p.object, p.version, &p.intent_id)
                })
                .await
                {
                    return apply_failed("recording the deletion", &e);
                }
                if live.is_none() {
                    return Verdict::Noop;
                }
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..DeleteParams::default()
                };
                match call("deleting the object", deadline, || {
                    api.delete(&p.object.name, &dp)
                })
                .await
                {
                    Ok(_) => Verdict::Applied,
                    Err(CallError::Kube(kube::Error::Api(s))) if s.code == 404 => Verdict::Noop,
                    Err(e) => apply_failed("deleting the object", &e),
                }
            }
            IntentAction::Apply { spec } => {
                if let Err(why) = validate_spec(&p.object, &spec) {
                    return Verdict::Rejected(RejectionCode::InvalidSpec, why);
                }
                let mut body =
                    manifest(&p.object, &spec, &self.cluster_id, p.version, &p.intent_id);
                if self.finalize_instances && p.object.kind == ObjectKind::ApplicationInstance {
                    body["metadata"]["finalizers"] =
                        serde_json::json!([finalizers::APPLICATION_INSTANCE]);
                }
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                let patch = Patch::Apply(body);
                match call("applying the object", deadline, || {
                    api.patch(&p.object.name, &pp, &patch)
                })
                .await
                {
                    Ok(_) => {
                        if live.is_none()
                            && let Err(error) = call("clearing a tombstone", deadline, || {
                                self.tombstones.clear(&p.object)
                            })
                            .await
                        {
                            tracing::warn!(%error, object = %p.object, "Failed to clear a tombstone");
                        }
                        Verdict::Applied
                    }
                    Err(CallError::Kube(kube::Error::Api(s))) if s.code == 422 || s.code == 400 => {
                        Verdict::Rejected(
                            RejectionCode::InvalidSpec,
                            format!("the API server refused the object: {}", s.message),
                        )
                    }
                    Err(e) => apply_failed("applying the object", &e),
                }
            }
        }
    }
}

/// How long one attempt of an API request of the intent path may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the API requests of one intent may take together, retries
/// included; then the intent is acked `apply_failed`.
pub const INTENT_BUDGET: Duration = Duration::from_secs(60);

/// The longest pause between two attempts (they start at 1 s and double).
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// Why an API request of the intent path failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The API server (or the connection to it) answered with an error.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// No answer within the time the attempt had.
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

impl CallError {
    /// Whether the same request may succeed when sent again soon.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::TimedOut(_) => true,
            Self::Kube(kube::Error::Api(s)) => s.code == 429 || s.code >= 500,
            Self::Kube(kube::Error::HyperError(_) | kube::Error::Service(_)) => true,
            Self::Kube(_) => false,
        }
    }
}

/// Runs one API request (`send` makes it anew for each attempt), each
/// attempt bounded by [`CALL_TIMEOUT`] and the deadline, and sends it again
/// after a pause while its failures are transient and the pause ends before
/// `deadline`. Every request of the intent path is idempotent (reads,
/// server-side apply, delete, the tombstone map), so sending one again is
/// safe.
async fn call<T, F, Fut>(what: &str, deadline: Instant, mut send: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1u32;
    loop {
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(CALL_TIMEOUT);
        let error = match tokio::time::timeout(limit, send()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => CallError::Kube(e),
            Err(_) => CallError::TimedOut(limit),
        };
        if !error.is_transient() || Instant::now() + pause > deadline {
            return Err(error);
        }
        tracing::warn!(%error, attempt, ?pause, "{what} failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
        attempt += 1;
    }
}

fn apply_failed(what: &str, e: &CallError) -> Verdict {
    // The hub resends `apply_failed` intents later; keep the message short and free of bodies.
    let detail = match e {
        CallError::Kube(kube::Error::Api(s)) => format!("{} ({})", s.reason, s.code),
        other => other.to_string().chars().take(200).collect(),
    };
    Verdict::Rejected(
        RejectionCode::ApplyFailed,
        format!("{what} failed: {detail}"),
    )
}

/// Checks an intent's spec against the kind's type and the rules the CRD
/// schema cannot express.
pub fn validate_spec(object: &ObjectRef, spec: &serde_json::Value) -> Result<(), String> {
    if object.namespace.is_empty() {
        return Err("the object needs a namespace".into());
    }
    if !is_dns_label(&object.name) && !is_dns_subdomain(&object.name) {
        return Err(format!("{:?} is not a valid object name", object.name));
    }
    match object.kind {
        ObjectKind::ApplicationInstance => {
            let s: ApplicationInstanceSpec = serde_json::from_value(spec.clone())
                .map_err(|e| format!("invalid ApplicationInstance spec: {e}"))?;
            crate::controllers::validate_application_spec(&object.namespace, &s)
                .map_err(|e| e.to_string())
        }
        ObjectKind::Operation => {
            let _: OperationSpec = serde_json::from_value(spec.clone())
                .map_err(|e| format!("invalid Operation spec: {e}"))?;
            Ok(())
        }
        ObjectKind::Cluster => Err("Cluster objects cannot be written by intent".into()),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The dynamic API for an intent's object kind (`None` for Cluster).
pub fn api_for(client: &kube::Client, object: &ObjectRef) -> Option<Api<DynamicObject>> {
    let ar = api_resource(object.kind)?;
    Some(Api::namespaced_with(client.clone(), &object.namespace, &ar))
}

/// The API resource of a writable kind.
pub fn api_resource(kind: ObjectKind) -> Option<ApiResource> {
    use kube::Resource;
    let (g, v, k) = match kind {
        ObjectKind::ApplicationInstance => (
            ApplicationInstance::group(&()),
            ApplicationInstance::version(&()),
            ApplicationInstance::kind(&()),
        ),
        ObjectKind::Operation => (
            Operation::group(&()),
            Operation::version(&()),
            Operation::kind(&()),
        ),
        ObjectKind::Cluster => return None,
    };
    let gvk = GroupVersionKind::gvk(&g, &v, &k);
    let plural = match kind {
        ObjectKind::ApplicationInstance => ApplicationInstance::plural(&()),
        _ => Operation::plural(&()),
    };
    Some(ApiResource::from_gvk_with_plural(&gvk, &plural))
}

/// The version recorded on an object the agent wrote.
pub fn applied_version(o: &DynamicObject) -> Option<u64> {
    o.metadata
        .annotations
        .as_ref()?
        .get(annotations::APPLIED_INTENT_VERSION)?
        .parse()
        .ok()
}

/// The id of the intent an object was last written from.
pub fn applied_intent_id(o: &DynamicObject) -> Option<String> {
    o.metadata
        .annotations
        .as_ref()?
        .get(annotations::APPLIED_INTENT_ID)
        .cloned()
}

/// The server-side apply body for an intent.
pub fn manifest(
    object: &ObjectRef,
    spec: &serde_json::Value,
    cluster_id: &str,
    version: u64,
    intent_id: &str,
) -> serde_json::Value {
    let ar = api_resource(object.kind).expect("only writable kinds reach manifest()");
    serde_json::json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {
            "name": object.name,
            "namespace": object.namespace,
            "labels": {
                labels::MANAGED_BY: labels::MANAGED_BY_CONTROL_PLANE,
                labels::CLUSTER_ID: cluster_id,
            },
            "annotations": {
                annotations::APPLIED_INTENT_VERSION: version.to_string(),
                annotations::APPLIED_INTENT_ID: intent_id,
            },
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked_against_the_kind() {
        let ai = ObjectRef::new(ObjectKind::ApplicationInstance, "team-a", "nc");
        let good = serde_json::json!({
            "appRef": {"catalogId": "nextcloud"},
            "mode": "placeholder",
        });
        assert!(validate_spec(&ai, &good).is_ok());
        let wrong_ns = serde_json::json!({
            "appRef": {"catalogId": "nextcloud"},
            "chart": {"sourceType": "helm", "url": "https://charts", "name": "nc", "version": "1.0.0"},
            "release": {"name": "nc", "namespace": "team-b"},
            "values": {"source": "inline"},
        });
        assert!(
            validate_spec(&ai, &wrong_ns)
                .unwrap_err()
                .contains("release.namespace")
        );
        assert!(validate_spec(&ai, &serde_json::json!({"mode": 7})).is_err());
        let cluster = ObjectRef::new(ObjectKind::Cluster, "", "c");
        assert!(validate_spec(&cluster, &good).is_err());
        let bad_name = ObjectRef::new(ObjectKind::ApplicationInstance, "team-a", "Not_Valid");
        assert!(validate_spec(&bad_name, &good).is_err());
    }

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("m", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn only_failures_that_may_pass_later_are_transient() {
        assert!(CallError::TimedOut(CALL_TIMEOUT).is_transient());
        for code in [429, 500, 503, 504] {
            assert!(CallError::Kube(api_error(code)).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!CallError::Kube(api_error(code)).is_transient(), "{code}");
        }
        let refused: Box<dyn std::error::Error + Send + Sync> = "connection refused".into();
        assert!(CallError::Kube(kube::Error::Service(refused)).is_transient());
    }

    #[tokio::test]
    async fn a_request_is_sent_again_only_while_its_failures_are_transient() {
        // Room for the first pause (1 s) but not the second (2 s): a request
        // that keeps failing transiently is sent exactly twice.
        let deadline = Instant::now() + Duration::from_millis(1500);
        let sent = std::cell::Cell::new(0);
        let r: Result<(), _> = call("test", deadline, || {
            sent.set(sent.get() + 1);
            std::future::ready(Err(api_error(404)))
        })
        .await;
        assert!(matches!(r, Err(CallError::Kube(kube::Error::Api(s))) if s.code == 404));
        assert_eq!(sent.get(), 1, "a 404 is final");

        sent.set(0);
        let r: Result<(), _> = call("test", deadline, || {
            sent.set(sent.get() + 1);
            std::future::ready(Err(api_error(503)))
        })
        .await;
        assert!(matches!(r, Err(CallError::Kube(kube::Error::Api(s))) if s.code == 503));
        assert_eq!(sent.get(), 2, "a 503 is sent again until the deadline");

        sent.set(0);
        let deadline = Instant::now() + Duration::from_millis(1500);
        let r = call("test", deadline, || {
            sent.set(sent.get() + 1);
            std::future::ready(if sent.get() < 2 {
                Err(api_error(503))
            } else {
                Ok(7)
            })
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(sent.get(), 2);
    }

    #[test]
    fn manifests_record_the_applied_version_and_intent() {
        let o = ObjectRef::new(ObjectKind::Operation, "ns", "op1");
        let m = manifest(&o, &serde_json::json!({"type": "Backup"}), "c1", 7, "i-1");
        assert_eq!(m["apiVersion"], "ops.vworkspace.io/v1alpha1");
        assert_eq!(m["kind"], "Operation");
        assert_eq!(
            m["metadata"]["annotations"][annotations::APPLIED_INTENT_VERSION],
            "7"
        );
        assert_eq!(m["metadata"]["labels"][labels::CLUSTER_ID], "c1");
    }
}
