//! The whole loop with real processes: hub-sim and the agent binary, against
//! the harness's kube-apiserver, with the [`crate::standins`] moving Flux and
//! Velero status. Used by the `vworkspace-demo` binary and the `e2e_*` tests.
//!
//! Nothing here links a project crate: hub-sim is driven through its admin API
//! ([`admin`]) and CLI, the agent through its command line ([`procs`]).

pub mod admin;
#[allow(unsafe_code)] // killpg of our own children's process groups
pub mod procs;
pub mod pyhub;
pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};
use serde_json::{Value, json};

use self::admin::{AdminClient, ClientError};

/// This project's CRDs (ApplicationInstance, Operation, Cluster), as generated.
pub const OUR_CRDS: &str = include_str!("../../../crds/manifests/all.yaml");

/// Annotation holding the intent version the agent applied.
pub const APPLIED_VERSION: &str = "vworkspace.io/applied-intent-version";
/// Annotation holding the id of the intent the agent applied.
pub const APPLIED_INTENT_ID: &str = "vworkspace.io/applied-intent-id";
/// Namespace the agent creates Velero objects in (its default).
pub const VELERO_NAMESPACE: &str = "velero";

/// Why setting up or checking the loop failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eError {
    /// Kubernetes API.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// CRD installation.
    #[error(transparent)]
    Crd(#[from] crate::crds::CrdError),
    /// hub-sim admin API.
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// A process.
    #[error(transparent)]
    Proc(#[from] procs::ProcError),
}

/// Installs our CRDs and every upstream CRD, and creates the Velero and agent
/// namespaces (idempotent).
pub async fn prepare_cluster(client: &kube::Client, agent_namespace: &str) -> Result<(), E2eError> {
    crate::crds::install_yaml(client, OUR_CRDS).await?;
    crate::crds::install_upstream_crds(client).await?;
    for ns in [VELERO_NAMESPACE, agent_namespace] {
        ensure_namespace(client, ns, &[]).await?;
    }
    Ok(())
}

/// Creates a namespace with labels unless it exists.
pub async fn ensure_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<(), kube::Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A managed ApplicationInstance of the test chart `hello` from the HTTP Helm
/// repository at `repo_url` (the real helm-controller installs it), with
/// `replicaCount` as an inline value.
pub fn app_manifest(
    repo_url: &str,
    ns: &str,
    name: &str,
    chart_version: &str,
    replicas: u32,
) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "appRef": {"catalogId": "hello"},
            "mode": "managed",
            "chart": {"sourceType": "helm", "url": repo_url, "name": "hello", "version": chart_version},
            "release": {"name": name, "namespace": ns},
            "values": {"source": "inline", "inline": {"replicaCount": replicas}},
        },
    })
}

/// An Operation on `target`.
pub fn op_manifest(
    ns: &str,
    name: &str,
    target: &str,
    type_: &str,
    engine: &str,
    parameters: Value,
) -> Value {
    json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Operation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": target},
            "type": type_,
            "engine": engine,
            "parameters": parameters,
        },
    })
}

/// The API resource of a kind the hub declares (`ApplicationInstance` or `Operation`).
pub fn api_resource(kind: &str) -> ApiResource {
    let (group, plural) = match kind {
        "ApplicationInstance" => ("apps.vworkspace.io", "applicationinstances"),
        _ => ("ops.vworkspace.io", "operations"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1alpha1", kind), plural)
}

/// Flux HelmRelease (helm.toolkit.fluxcd.io/v2).
pub fn helm_release_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    )
}

/// Velero Backup (`backup`) or Restore (`restore`).
pub fn velero_resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("velero.io", "v1", kind), &plural)
}

/// One object as the cluster has it (`None` if absent).
pub async fn cluster_object(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<DynamicObject>, kube::Error> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &api_resource(kind))
        .get_opt(name)
        .await
}

/// The intent version recorded on an object the agent wrote.
pub fn applied_version(o: &DynamicObject) -> Option<u64> {
    o.metadata
        .annotations
        .as_ref()?
        .get(APPLIED_VERSION)?
        .parse()
        .ok()
}

/// Issues a join token through the admin API (the token is a secret: never print it).
pub async fn create_token(
    admin: &AdminClient,
    cluster: &str,
    org: &str,
) -> Result<String, ClientError> {
    let v = admin
        .post(
            "/v1/tokens",
            &json!({"cluster": cluster, "org": org, "ttl_seconds": 3600}),
        )
        .await?;
    Ok(v["token"].as_str().unwrap_or_default().to_owned())
}

/// Declares a manifest on `cluster`; returns the intent (id, version, ...).
pub async fn apply(
    admin: &AdminClient,
    cluster: &str,
    manifest: &Value,
) -> Result<Value, ClientError> {
    admin
        .post(&format!("/v1/clusters/{cluster}/apply"), manifest)
        .await
}

/// Declares that an object must be deleted; returns the intent.
pub async fn delete(
    admin: &AdminClient,
    cluster: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Value, ClientError> {
    admin
        .post(
            &format!("/v1/clusters/{cluster}/delete"),
            &json!({"kind": kind, "namespace": ns, "name": name}),
        )
        .await
}

/// Replaces the fault switches of `cluster` (`{}` clears them).
pub async fn set_faults(
    admin: &AdminClient,
    cluster: &str,
    faults: Value,
) -> Result<(), ClientError> {
    admin
        .put(&format!("/v1/clusters/{cluster}/faults"), &faults)
        .await
        .map(|_| ())
}

/// Every intent of `cluster`, oldest first.
pub async fn intents(admin: &AdminClient, cluster: &str) -> Result<Vec<Value>, ClientError> {
    let v = admin
        .get(&format!("/v1/intents?cluster={cluster}&limit=100000"))
        .await?;
    let mut list = v.as_array().cloned().unwrap_or_default();
    list.sort_by_key(|i| i["seq"].as_i64().unwrap_or(0));
    Ok(list)
}

/// The declared objects of `cluster` with their latest status and ack outcome.
pub async fn hub_objects(admin: &AdminClient, cluster: &str) -> Result<Vec<Value>, ClientError> {
    Ok(admin
        .get(&format!("/v1/objects?cluster={cluster}"))
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// One declared object at the hub.
pub async fn hub_object(
    admin: &AdminClient,
    cluster: &str,
    kind: &str,
    name: &str,
) -> Result<Option<Value>, ClientError> {
    Ok(hub_objects(admin, cluster)
        .await?
        .into_iter()
        .find(|o| o["kind"] == kind && o["name"] == name))
}

/// Whether the cluster shows as connected at the hub.
pub async fn hub_connected(admin: &AdminClient, cluster: &str) -> Result<bool, ClientError> {
    let v = admin.get("/v1/clusters").await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == cluster && c["connected"] == true))
}

/// `Type=Status(Reason)` of each condition in a JSON list, sorted.
pub fn condition_set(conditions: &Value) -> BTreeSet<String> {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The hub's condition `type_` of an object, as `(status, reason, message)`
/// (empty strings when absent), for timelines and failure messages.
pub fn hub_condition(o: &Value, type_: &str) -> (String, String, String) {
    let c = o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// The hub's record of intent `id`, once `pred` holds (panics after `within`,
/// naming `what` and the last record).
pub async fn intent_when(
    admin: &AdminClient,
    cluster: &str,
    id: &str,
    what: &str,
    within: std::time::Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    crate::wait::eventually(&format!("intent {id}: {what}"), within, || async {
        let all = intents(admin, cluster).await.map_err(|e| e.to_string())?;
        let i = all
            .into_iter()
            .find(|i| i["id"] == id)
            .ok_or("unknown intent")?;
        if pred(&i) { Ok(i) } else { Err(i.to_string()) }
    })
    .await
}

/// (applied intent version, chart version) of an `ApplicationInstance` in
/// the cluster; `None` if it is absent.
pub async fn instance_versions(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<(Option<u64>, String)>, kube::Error> {
    Ok(cluster_object(client, "ApplicationInstance", ns, name)
        .await?
        .map(|o| {
            (
                applied_version(&o),
                o.data["spec"]["chart"]["version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }))
}

/// Whether a condition list holds `type_=status` (and `reason` unless empty).
pub fn has_condition(conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    conditions.as_array().into_iter().flatten().any(|c| {
        c["type"] == type_ && c["status"] == status && (reason.is_empty() || c["reason"] == reason)
    })
}

/// Counts of the fault and lifecycle runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Intents the hub issued for the cluster.
    pub sent: usize,
    /// Intents never settled, or whose effect the cluster does not show.
    pub lost: usize,
    /// (object, version) pairs the agent applied more than once.
    pub duplicated: usize,
    /// Finished Operations the agent's history limit deleted (not a loss:
    /// the hub saw them finish and was told of the deletion).
    pub history_cleaned: usize,
    /// Human-readable findings (empty when all is well).
    pub problems: Vec<String>,
}

/// A hub record of an ApplicationInstance that helm-controller made Ready.
pub fn hub_ready(hub_object: &Value) -> bool {
    has_condition(
        &hub_object["status"]["conditions"],
        "Ready",
        "True",
        "HelmReleaseReady",
    )
}

/// A hub record of an Operation that succeeded.
pub fn hub_succeeded(hub_object: &Value) -> bool {
    hub_object["status"]["phase"] == "Succeeded"
        && has_condition(&hub_object["status"]["conditions"], "Succeeded", "True", "")
}

/// Whether the agent reported a declared Operation deleted without a delete
/// intent: the Operation history limit removed it after it finished.
pub fn history_cleaned(hub_object: &Value) -> bool {
    hub_object["kind"] == "Operation"
        && hub_object["deleted"] != true
        && hub_object["last_outcome"] == "applied"
        && hub_object["status"]["outputs"]["deleted"] == true
}

/// How often the agent logged `Intent applied` per intent id, over every
/// incarnation's log lines in `log`.
pub fn applied_per_intent(log: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.contains("Intent applied")) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(id) = find_key(&v, "intent").and_then(Value::as_str) {
            *out.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    out
}

fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        _ => None,
    }
}

/// Checks that the hub and the cluster agree, for every object declared on
/// `cluster`:
///
/// - every intent is acked, and none was rejected (`lost` otherwise);
/// - a declared object exists with the newest version annotated, a deleted one
///   is gone (`lost` otherwise);
/// - no intent was applied twice according to the agent's log (`duplicated`);
/// - the hub's stored status (conditions, and phase for Operations) equals the
///   cluster's.
///
/// Call it repeatedly until `problems` is empty: it reports, it does not wait.
pub async fn delivery_report(
    client: &kube::Client,
    admin: &AdminClient,
    cluster: &str,
    agent_log: &Path,
) -> Result<DeliveryReport, E2eError> {
    let intents = intents(admin, cluster).await?;
    let objects = hub_objects(admin, cluster).await?;
    let applied = applied_per_intent(agent_log);
    let mut r = DeliveryReport {
        sent: intents.len(),
        ..Default::default()
    };
    for i in &intents {
        let what = format!(
            "intent {} ({} {}/{} v{})",
            i["id"].as_str().unwrap_or("?"),
            i["kind"].as_str().unwrap_or("?"),
            i["namespace"].as_str().unwrap_or("?"),
            i["name"].as_str().unwrap_or("?"),
            i["version"]
        );
        match i["outcome"].as_str() {
            None => {
                r.lost += 1;
                r.problems.push(format!("{what} is not acked"));
            }
            Some("applied" | "noop") => {}
            Some(other) => {
                r.lost += 1;
                r.problems.push(format!(
                    "{what} ended {other}: {}",
                    i["outcome_message"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(id) = i["id"].as_str()
            && applied.get(id).copied().unwrap_or(0) > 1
        {
            r.duplicated += 1;
            r.problems
                .push(format!("{what} was applied {} times", applied[id]));
        }
    }
    for o in &objects {
        let (kind, ns, name) = (
            o["kind"].as_str().unwrap_or(""),
            o["namespace"].as_str().unwrap_or(""),
            o["name"].as_str().unwrap_or(""),
        );
        let live = cluster_object(client, kind, ns, name).await?;
        let deleted = o["deleted"] == true;
        match (&live, deleted) {
            (None, true) => continue,
            (Some(_), true) => {
                r.lost += 1;
                r.problems.push(format!(
                    "{kind} {ns}/{name} was deleted at the hub but exists"
                ));
                continue;
            }
            (None, false) if kind == "Operation" && history_cleaned(o) => {
                r.history_cleaned += 1;
                continue;
            }
            (None, false) => {
                r.lost += 1;
                r.problems
                    .push(format!("{kind} {ns}/{name} is declared but missing"));
                continue;
            }
            (Some(live), false) => {
                let want = o["version"].as_u64();
                if applied_version(live) != want {
                    r.lost += 1;
                    r.problems.push(format!(
                        "{kind} {ns}/{name} is at version {:?}, the hub declared {want:?}",
                        applied_version(live)
                    ));
                }
                let cluster_status = live.data.get("status").cloned().unwrap_or(Value::Null);
                let hub_status = &o["status"];
                let (c, h) = (
                    condition_set(&cluster_status["conditions"]),
                    condition_set(&hub_status["conditions"]),
                );
                if c != h {
                    r.problems.push(format!(
                        "{kind} {ns}/{name}: hub conditions {h:?} differ from the cluster's {c:?}"
                    ));
                }
                if kind == "Operation" && cluster_status["phase"] != hub_status["phase"] {
                    r.problems.push(format!(
                        "{kind} {ns}/{name}: hub phase {} differs from the cluster's {}",
                        hub_status["phase"], cluster_status["phase"]
                    ));
                }
            }
        }
    }
    Ok(r)
}

/// One row of a summary table: name → cells.
pub type Row = BTreeMap<&'static str, String>;

/// Renders rows as an aligned text table with the given columns.
pub fn render_table(columns: &[&'static str], rows: &[Row]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    for row in rows {
        for (i, c) in columns.iter().enumerate() {
            widths[i] = widths[i].max(row.get(c).map_or(1, String::len));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(columns.to_vec());
    for row in rows {
        line(
            columns
                .iter()
                .map(|c| row.get(c).map_or("-", String::as_str))
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_sets_ignore_order_and_messages() {
        let a = json!([{"type": "Ready", "status": "True", "reason": "X", "message": "a"},
                       {"type": "Reconciling", "status": "False", "reason": "Y"}]);
        let b = json!([{"type": "Reconciling", "status": "False", "reason": "Y"},
                       {"type": "Ready", "status": "True", "reason": "X", "message": "b"}]);
        assert_eq!(condition_set(&a), condition_set(&b));
        assert!(has_condition(&a, "Ready", "True", "X"));
        assert!(!has_condition(&a, "Ready", "False", ""));
    }

    #[test]
    fn applied_lines_are_counted_per_intent() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        std::fs::write(
            &log,
            concat!(
                "{\"fields\":{\"message\":\"Intent applied\",\"intent\":\"i-1\",\"version\":1}}\n",
                "{\"fields\":{\"message\":\"Intent rejected\",\"intent\":\"i-2\"}}\n",
                "not json Intent applied\n",
                "{\"fields\":{\"message\":\"Intent applied\",\"intent\":\"i-1\",\"version\":1}}\n",
            ),
        )
        .unwrap();
        let counts = applied_per_intent(&log);
        assert_eq!(counts.get("i-1"), Some(&2));
        assert_eq!(counts.get("i-2"), None);
    }

    #[test]
    fn tables_align() {
        let mut row = Row::new();
        row.insert("OBJECT", "app/nextcloud".into());
        row.insert("RESULT", "Ready".into());
        let t = render_table(&["OBJECT", "RESULT"], &[row]);
        assert_eq!(t, "OBJECT         RESULT\napp/nextcloud  Ready\n");
    }
}
