//! Pure translation of an ApplicationInstance into Flux objects.
//!
//! `sourceType: helm` → HelmRepository + HelmRelease `chart.spec.sourceRef`;
//! `sourceType: oci` → OCIRepository at `oci://…/<chart>` + HelmRelease
//! `chartRef`. A HelmRepository is shared by every instance of a namespace
//! that uses the same repository URL: one object (one write, one index
//! download by source-controller) instead of one per instance. It has no
//! owner; the controller deletes it when its last user goes. Values from a Secret or ConfigMap go through `valuesFrom`, so
//! the agent never reads or copies secret material.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt, api::DynamicObject};
use serde_json::{Value, json};
use vworkspace_crds::{
    ApplicationInstance, ChartSource, ChartSourceType, ValuesSource, well_known::labels,
};

use crate::controllers::resources::{HELM_RELEASE, HELM_REPOSITORY, Kind, OCI_REPOSITORY};

/// How often Flux re-checks the release (drift, retries).
pub const RELEASE_INTERVAL: &str = "10m";
/// How often Flux re-checks the chart source.
pub const SOURCE_INTERVAL: &str = "10m";
/// Install attempts before Flux gives up (remediation default).
pub const INSTALL_RETRIES: i64 = 3;
/// Upgrade attempts before Flux rolls back (remediation default).
pub const UPGRADE_RETRIES: i64 = 1;
/// Helm releases kept in history.
pub const MAX_HISTORY: i64 = 10;
/// Rollback timeout.
pub const ROLLBACK_TIMEOUT: &str = "5m";
/// Media type of a Helm chart layer in an OCI artifact.
pub const HELM_CHART_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

/// Label on a shared HelmRepository (value: `"true"`).
pub const SHARED_SOURCE_LABEL: &str = "app.vworkspace.io/shared-source";

/// The Flux objects for one managed instance.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxObjects {
    /// HelmRepository (shared, see [`shared_source_name`]) or OCIRepository
    /// (owned by the instance).
    pub source: DynamicObject,
    /// Which kind `source` is.
    pub source_kind: Kind,
    /// Whether `source` is shared with other instances (no owner).
    pub shared_source: bool,
    /// The HelmRelease.
    pub release: DynamicObject,
}

/// Name of a per-instance chart source object for a release (OCIRepository;
/// HelmRepository before it was shared).
pub fn source_name(release: &str) -> String {
    format!("{release}-source")
}

/// Name of the HelmRepository shared by the instances of a namespace whose
/// chart comes from `url`: a digest of the URL, stable across agent versions.
pub fn shared_source_name(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    format!("helmrepo-{}", &hex::encode(digest.as_ref())[..16])
}

/// The shared HelmRepository an instance uses, if it is a managed helm-source
/// instance.
pub fn shared_source_of(ai: &ApplicationInstance) -> Option<String> {
    let chart = ai.spec.chart.as_ref()?;
    ai.spec.release.as_ref()?;
    (chart.source_type == ChartSourceType::Helm).then(|| shared_source_name(&chart.url))
}

/// Builds the source and HelmRelease for a managed instance, owned by it.
///
/// Returns `None` when the spec lacks chart, release or values (placeholder
/// mode or an invalid spec, which validation reports).
pub fn desired(ai: &ApplicationInstance) -> Option<FluxObjects> {
    let chart = ai.spec.chart.as_ref()?;
    let release = ai.spec.release.as_ref()?;
    let values = ai.spec.values.as_ref()?;
    let namespace = ai.namespace()?;
    let owner = owner_ref(ai)?;
    let labels = downstream_labels(ai);
    let (source_kind, source_spec) = source_spec(chart);
    let shared_source = source_kind == HELM_REPOSITORY;
    let source_name = if shared_source {
        shared_source_name(&chart.url)
    } else {
        source_name(&release.name)
    };
    let mut source = source_kind.object(&source_name, &namespace);
    if shared_source {
        source.metadata.labels = Some(shared_source_labels());
    } else {
        source.metadata.labels = Some(labels.clone());
        source.metadata.owner_references = Some(vec![owner.clone()]);
    }
    source.data = json!({ "spec": source_spec });

    let mut spec = json!({
        "interval": RELEASE_INTERVAL,
        "releaseName": release.name,
        "install": { "remediation": { "retries": INSTALL_RETRIES } },
        "upgrade": {
            "cleanupOnFail": true,
            "remediation": {
                "retries": UPGRADE_RETRIES,
                "remediateLastFailure": true,
                "strategy": "rollback",
            },
        },
        "rollback": { "timeout": ROLLBACK_TIMEOUT, "cleanupOnFail": true, "recreate": false },
        "maxHistory": MAX_HISTORY,
    });
    match chart.source_type {
        ChartSourceType::Helm => {
            spec["chart"] = json!({
                "spec": {
                    "chart": chart.name,
                    "version": chart.version,
                    "interval": SOURCE_INTERVAL,
                    "sourceRef": { "kind": HELM_REPOSITORY.kind, "name": source_name },
                }
            });
        }
        ChartSourceType::Oci => {
            spec["chartRef"] = json!({ "kind": OCI_REPOSITORY.kind, "name": source_name });
        }
    }
    match values.source {
        ValuesSource::Inline => {
            if let Some(inline) = &values.inline {
                spec["values"] = json!(inline);
            }
        }
        ValuesSource::SecretRef => {
            if let Some(r) = &values.secret_ref {
                spec["valuesFrom"] =
                    json!([{ "kind": "Secret", "name": r.name, "valuesKey": r.key }]);
            }
        }
        ValuesSource::ConfigMapRef => {
            if let Some(r) = &values.config_map_ref {
                spec["valuesFrom"] =
                    json!([{ "kind": "ConfigMap", "name": r.name, "valuesKey": r.key }]);
            }
        }
    }
    let mut hr = HELM_RELEASE.object(&release.name, &namespace);
    hr.metadata.labels = Some(labels);
    hr.metadata.owner_references = Some(vec![owner]);
    hr.data = json!({ "spec": spec });
    Some(FluxObjects {
        source,
        source_kind,
        shared_source,
        release: hr,
    })
}

/// Labels on a shared HelmRepository: no instance name, it has many.
pub fn shared_source_labels() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_OPERATOR.to_string(),
        ),
        (SHARED_SOURCE_LABEL.to_string(), "true".to_string()),
    ])
}

/// The source kind and spec for a chart.
pub fn source_spec(chart: &ChartSource) -> (Kind, Value) {
    match chart.source_type {
        ChartSourceType::Helm => (
            HELM_REPOSITORY,
            json!({ "url": chart.url, "interval": SOURCE_INTERVAL }),
        ),
        ChartSourceType::Oci => (
            OCI_REPOSITORY,
            json!({
                "url": oci_chart_url(&chart.url, &chart.name),
                // OCI tags cannot hold '+': Helm pushes `1.2.3+b` as `1.2.3_b`.
                "ref": { "tag": chart.version.replace('+', "_") },
                "interval": SOURCE_INTERVAL,
                "layerSelector": { "mediaType": HELM_CHART_MEDIA_TYPE, "operation": "copy" },
            }),
        ),
    }
}

/// `oci://host/path` + chart → `oci://host/path/chart` (the chart artifact).
pub fn oci_chart_url(url: &str, chart: &str) -> String {
    let base = url.trim_end_matches('/');
    if base.rsplit('/').next() == Some(chart) {
        base.to_string()
    } else {
        format!("{base}/{chart}")
    }
}

/// Labels on every object derived from an instance.
pub fn downstream_labels(ai: &ApplicationInstance) -> std::collections::BTreeMap<String, String> {
    let mut l = std::collections::BTreeMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_OPERATOR.to_string(),
        ),
        (labels::APPLICATION_INSTANCE.to_string(), ai.name_any()),
    ]);
    if let Some(id) = ai.labels().get(labels::CLUSTER_ID) {
        l.insert(labels::CLUSTER_ID.to_string(), id.clone());
    }
    l
}

/// Controller owner reference to the instance (GC and watch mapping).
pub fn owner_ref(ai: &ApplicationInstance) -> Option<OwnerReference> {
    let mut r = ai.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;
    use vworkspace_crds::{AppRef, ApplicationInstanceSpec, KeyRef, Mode, ReleaseRef, ValuesSpec};

    pub(crate) fn ai(source_type: ChartSourceType, values: ValuesSpec) -> ApplicationInstance {
        let url = match source_type {
            ChartSourceType::Helm => "https://charts.example.com",
            ChartSourceType::Oci => "oci://ghcr.io/example/charts/",
        };
        ApplicationInstance {
            metadata: ObjectMeta {
                name: Some("nc".into()),
                namespace: Some("team-a".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([(
                    labels::CLUSTER_ID.to_string(),
                    "c1".to_string(),
                )])),
                ..Default::default()
            },
            spec: ApplicationInstanceSpec {
                app_ref: AppRef {
                    catalog_id: "nextcloud".into(),
                },
                mode: Mode::Managed,
                chart: Some(ChartSource {
                    source_type,
                    url: url.into(),
                    name: "nextcloud".into(),
                    version: "6.6.0+b1".into(),
                }),
                release: Some(ReleaseRef {
                    name: "nc".into(),
                    namespace: "team-a".into(),
                }),
                values: Some(values),
                integrations: None,
            },
            status: None,
        }
    }

    fn inline() -> ValuesSpec {
        ValuesSpec {
            source: ValuesSource::Inline,
            inline: Some(BTreeMap::from([("replicas".to_string(), json!(2))])),
            secret_ref: None,
            config_map_ref: None,
        }
    }

    fn secret() -> ValuesSpec {
        ValuesSpec {
            source: ValuesSource::SecretRef,
            inline: None,
            secret_ref: Some(KeyRef {
                name: "nc-values".into(),
                key: "values.yaml".into(),
            }),
            config_map_ref: None,
        }
    }

    fn config_map() -> ValuesSpec {
        ValuesSpec {
            source: ValuesSource::ConfigMapRef,
            inline: None,
            secret_ref: None,
            config_map_ref: Some(KeyRef {
                name: "nc-cm".into(),
                key: "v.yaml".into(),
            }),
        }
    }

    #[test]
    fn helm_source_uses_helm_repository_and_source_ref() {
        let f = desired(&ai(ChartSourceType::Helm, inline())).unwrap();
        assert_eq!(f.source_kind, HELM_REPOSITORY);
        assert!(f.shared_source);
        let shared = shared_source_name("https://charts.example.com");
        assert_eq!(f.source.metadata.name.as_deref(), Some(shared.as_str()));
        assert_eq!(f.source.data["spec"]["url"], "https://charts.example.com");
        let spec = &f.release.data["spec"];
        assert_eq!(spec["chart"]["spec"]["chart"], "nextcloud");
        assert_eq!(spec["chart"]["spec"]["version"], "6.6.0+b1");
        assert_eq!(spec["chart"]["spec"]["sourceRef"]["kind"], "HelmRepository");
        assert_eq!(spec["chart"]["spec"]["sourceRef"]["name"], shared.as_str());
        assert!(spec.get("chartRef").is_none());
        assert_eq!(spec["values"]["replicas"], 2);
        assert!(spec.get("valuesFrom").is_none());
    }

    #[test]
    fn oci_source_points_at_the_chart_artifact_and_uses_chart_ref() {
        let f = desired(&ai(ChartSourceType::Oci, inline())).unwrap();
        assert_eq!(f.source_kind, OCI_REPOSITORY);
        assert!(!f.shared_source);
        assert_eq!(
            f.source.data["spec"]["url"],
            "oci://ghcr.io/example/charts/nextcloud"
        );
        assert_eq!(f.source.data["spec"]["ref"]["tag"], "6.6.0_b1");
        assert_eq!(
            f.source.data["spec"]["layerSelector"]["mediaType"],
            HELM_CHART_MEDIA_TYPE
        );
        let spec = &f.release.data["spec"];
        assert_eq!(spec["chartRef"]["kind"], "OCIRepository");
        assert_eq!(spec["chartRef"]["name"], "nc-source");
        assert!(spec.get("chart").is_none());
    }

    #[test]
    fn oci_url_table() {
        let table = [
            ("oci://r.io/charts", "app", "oci://r.io/charts/app"),
            ("oci://r.io/charts/", "app", "oci://r.io/charts/app"),
            ("oci://r.io/charts/app", "app", "oci://r.io/charts/app"),
        ];
        for (url, chart, want) in table {
            assert_eq!(oci_chart_url(url, chart), want);
        }
    }

    #[test]
    fn values_from_references_never_copy() {
        for (values, kind, name, key) in [
            (secret(), "Secret", "nc-values", "values.yaml"),
            (config_map(), "ConfigMap", "nc-cm", "v.yaml"),
        ] {
            let f = desired(&ai(ChartSourceType::Helm, values)).unwrap();
            let spec = &f.release.data["spec"];
            assert!(spec.get("values").is_none());
            assert_eq!(
                spec["valuesFrom"],
                json!([{"kind": kind, "name": name, "valuesKey": key}])
            );
        }
    }

    #[test]
    fn remediation_defaults_are_explicit() {
        let f = desired(&ai(ChartSourceType::Helm, inline())).unwrap();
        let spec = &f.release.data["spec"];
        assert_eq!(spec["install"]["remediation"]["retries"], INSTALL_RETRIES);
        assert_eq!(spec["upgrade"]["remediation"]["retries"], UPGRADE_RETRIES);
        assert_eq!(spec["upgrade"]["remediation"]["remediateLastFailure"], true);
        assert_eq!(spec["upgrade"]["cleanupOnFail"], true);
        assert_eq!(spec["rollback"]["timeout"], ROLLBACK_TIMEOUT);
        assert_eq!(spec["rollback"]["cleanupOnFail"], true);
        assert_eq!(spec["maxHistory"], MAX_HISTORY);
    }

    #[test]
    fn one_shared_helm_repository_per_url() {
        let a = ai(ChartSourceType::Helm, inline());
        let mut b = a.clone();
        b.metadata.name = Some("other".into());
        b.metadata.uid = Some("uid-2".into());
        b.spec.release.as_mut().unwrap().name = "other".into();
        let (fa, fb) = (desired(&a).unwrap(), desired(&b).unwrap());
        assert_eq!(fa.source, fb.source);
        assert_eq!(shared_source_of(&a), fa.source.metadata.name);
        let mut c = a.clone();
        c.spec.chart.as_mut().unwrap().url = "https://other.example.com".into();
        assert_ne!(
            desired(&c).unwrap().source.metadata.name,
            fa.source.metadata.name
        );
        // No owner (many instances use it), so no instance's deletion takes it
        // away from the others; a label says it is shared.
        assert!(fa.source.metadata.owner_references.is_none());
        let l = fa.source.metadata.labels.as_ref().unwrap();
        assert_eq!(l[SHARED_SOURCE_LABEL], "true");
        assert_eq!(l[labels::MANAGED_BY], labels::MANAGED_BY_OPERATOR);
        assert!(!l.contains_key(labels::APPLICATION_INSTANCE));
        // A valid Kubernetes name, the same across agent versions.
        assert_eq!(
            shared_source_name("https://charts.example.com"),
            "helmrepo-".to_string()
                + &hex::encode(
                    ring::digest::digest(&ring::digest::SHA256, b"https://charts.example.com")
                        .as_ref()
                )[..16]
        );
        let oci = ai(ChartSourceType::Oci, inline());
        assert_eq!(shared_source_of(&oci), None);
    }

    #[test]
    fn objects_are_owned_and_labelled() {
        let helm = desired(&ai(ChartSourceType::Helm, inline())).unwrap();
        let oci = desired(&ai(ChartSourceType::Oci, inline())).unwrap();
        for o in [&helm.release, &oci.source, &oci.release] {
            let owner = &o.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.uid, "uid-1");
            assert_eq!(owner.kind, "ApplicationInstance");
            assert_eq!(owner.controller, Some(true));
            let l = o.metadata.labels.as_ref().unwrap();
            assert_eq!(l[labels::APPLICATION_INSTANCE], "nc");
            assert_eq!(l[labels::CLUSTER_ID], "c1");
            assert_eq!(l[labels::MANAGED_BY], labels::MANAGED_BY_OPERATOR);
            assert_eq!(o.metadata.namespace.as_deref(), Some("team-a"));
        }
    }

    #[test]
    fn placeholder_has_no_flux_objects() {
        let mut a = ai(ChartSourceType::Helm, inline());
        a.spec.mode = Mode::Placeholder;
        a.spec.chart = None;
        a.spec.values = None;
        assert!(desired(&a).is_none());
    }
}
