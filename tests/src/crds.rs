//! Installing CRDs into the test control plane, and the pinned upstream CRDs.
//!
//! Installation follows envtest (pkg/envtest/crd.go): multi-document YAML is
//! split, non-CRD documents are skipped, `spec.conversion` is dropped when it
//! names a webhook (no webhook service exists in the test cluster), existing CRDs
//! are updated. It is stricter when waiting: `Established` and `NamesAccepted`
//! must be True, then discovery must list the plural for every served version.
//!
//! Upstream CRDs are read from the upstream Go modules at pinned releases
//! (`go mod download -json MODULE@VERSION` puts them in the Go module cache), so
//! nothing of theirs lives in this repository. The upstream vWorkspace operator
//! module is not served by the Go module proxy; its CRDs are read from the
//! reference copies in `../shared/upstream-crds/vworkspace/` instead (override
//! the `shared` directory with `VWS_SHARED_DIR`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Why CRDs could not be loaded or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing YAML from {origin}: {message}")]
    Yaml { origin: String, message: String },
    #[error("document {index} of {origin} is not a valid CustomResourceDefinition: {source}")]
    Invalid {
        origin: String,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("installing CRD {name}: {source}")]
    Install {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name} not ready within {timeout:?}: {reason}")]
    NotReady {
        name: String,
        timeout: Duration,
        reason: String,
    },
    /// `go mod download` failed or Go is missing.
    #[error(
        "fetching Go module {module}@{version} failed: {reason}; to fix: install Go >= 1.26 \
         with access to the Go module proxy (GOTOOLCHAIN=local is used), or pre-fill the \
         module cache (GOMODCACHE)"
    )]
    Module {
        module: String,
        version: String,
        reason: String,
    },
}

/// Parses every CustomResourceDefinition in a (multi-document) YAML or JSON text.
///
/// Documents of other kinds, and CRDs without `spec.group`/`spec.names.kind`, are
/// skipped. `spec.conversion` is removed when its strategy is `Webhook`, and any
/// `status` is dropped (it is the server's to set).
pub fn parse(text: &str, origin: &str) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let docs: Vec<Value> = if origin.ends_with(".json") {
        vec![serde_json::from_str(text).map_err(|e| CrdError::Yaml {
            origin: origin.to_string(),
            message: e.to_string(),
        })?]
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| CrdError::Yaml {
            origin: origin.to_string(),
            message: e.to_string(),
        })?
    };
    let mut out = Vec::new();
    for (index, mut doc) in docs.into_iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
            continue;
        }
        let spec = doc.get("spec");
        let has_group = spec.and_then(|s| s.get("group")).is_some();
        let has_kind = spec
            .and_then(|s| s.get("names"))
            .and_then(|n| n.get("kind"))
            .is_some();
        if !has_group || !has_kind {
            continue;
        }
        if let Some(obj) = doc.as_object_mut() {
            obj.remove("status");
        }
        if let Some(spec) = doc.get_mut("spec").and_then(Value::as_object_mut) {
            let webhook = spec
                .get("conversion")
                .and_then(|c| c.get("strategy"))
                .and_then(Value::as_str)
                == Some("Webhook");
            if webhook {
                spec.remove("conversion");
            }
        }
        let crd = serde_json::from_value(doc).map_err(|source| CrdError::Invalid {
            origin: origin.to_string(),
            index,
            source,
        })?;
        out.push(crd);
    }
    Ok(out)
}

/// Reads CRDs from files and directories (`.yaml`, `.yml`, `.json`, not recursive).
pub fn from_paths(paths: &[impl AsRef<Path>]) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(|source| CrdError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let mut entries: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path.to_path_buf());
        }
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| CrdError::Read {
            path: file.clone(),
            source,
        })?;
        out.extend(parse(&text, &file.display().to_string())?);
    }
    Ok(out)
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata
        .name
        .clone()
        .unwrap_or_else(|| format!("{}.{}", crd.spec.names.plural, crd.spec.group))
}

/// How long [`install`] waits for each CRD; generous for 2-core machines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates or updates the CRDs, then waits until all are established and discoverable.
///
/// Duplicates (same name) are collapsed, the last one winning, as in envtest.
pub async fn install(
    client: &kube::Client,
    crds: &[CustomResourceDefinition],
) -> Result<(), CrdError> {
    let mut unique: Vec<CustomResourceDefinition> = Vec::new();
    for crd in crds {
        let name = crd_name(crd);
        unique.retain(|c| crd_name(c) != name);
        unique.push(crd.clone());
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in &unique {
        create_or_update(&api, crd).await?;
    }
    for crd in &unique {
        wait_ready(client, crd, READY_TIMEOUT).await?;
    }
    Ok(())
}

/// [`parse`] + [`install`] for a YAML text.
pub async fn install_yaml(client: &kube::Client, yaml: &str) -> Result<(), CrdError> {
    install(client, &parse(yaml, "<inline YAML>")?).await
}

/// [`from_paths`] + [`install`].
pub async fn install_paths(
    client: &kube::Client,
    paths: &[impl AsRef<Path>],
) -> Result<(), CrdError> {
    install(client, &from_paths(paths)?).await
}

async fn create_or_update(
    api: &Api<CustomResourceDefinition>,
    crd: &CustomResourceDefinition,
) -> Result<(), CrdError> {
    let name = crd_name(crd);
    let mut crd = crd.clone();
    crd.metadata.name = Some(name.clone());
    crd.metadata.resource_version = None;
    let fail = |source| CrdError::Install {
        name: name.clone(),
        source,
    };
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(fail(e)),
    }
    // Exists: update with the live resourceVersion; retry on write conflicts.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let live = api.get(&name).await.map_err(fail)?;
        crd.metadata.resource_version = live.metadata.resource_version;
        match api.replace(&name, &PostParams::default(), &crd).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 10 => {
                let jitter = rand::random::<u64>() % 50;
                tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
            }
            Err(e) => return Err(fail(e)),
        }
    }
}

fn condition_true(crd: &CustomResourceDefinition, type_: &str) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Waits until the CRD is Established and NamesAccepted and discovery lists it.
pub async fn wait_ready(
    client: &kube::Client,
    crd: &CustomResourceDefinition,
    timeout: Duration,
) -> Result<(), CrdError> {
    let name = crd_name(crd);
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let not_ready = |reason: String| CrdError::NotReady {
        name: name.clone(),
        timeout,
        reason,
    };
    loop {
        let reason = match api.get_opt(&name).await {
            Ok(Some(live))
                if condition_true(&live, "Established")
                    && condition_true(&live, "NamesAccepted") =>
            {
                break;
            }
            Ok(Some(live)) => format!(
                "conditions: {:?}",
                live.status.and_then(|s| s.conditions).unwrap_or_default()
            ),
            Ok(None) => "CRD not found".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(not_ready(reason));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let gv = format!("{}/{}", crd.spec.group, version.name);
        loop {
            let reason = match client.list_api_group_resources(&gv).await {
                Ok(list)
                    if list
                        .resources
                        .iter()
                        .any(|r| r.name == crd.spec.names.plural) =>
                {
                    break;
                }
                Ok(_) => format!("discovery for {gv} does not list {}", crd.spec.names.plural),
                Err(e) => format!("discovery for {gv}: {e}"),
            };
            if Instant::now() > deadline {
                return Err(not_ready(reason));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// One CRD file inside a pinned upstream Go module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSource {
    pub module: &'static str,
    pub version: &'static str,
    /// Path of the YAML file inside the module.
    pub path: &'static str,
}

macro_rules! src {
    ($m:expr, $v:expr, $p:expr) => {
        UpstreamSource {
            module: $m,
            version: $v,
            path: $p,
        }
    };
}

const FLUX_HELM: &str = "github.com/fluxcd/helm-controller";
const FLUX_SOURCE: &str = "github.com/fluxcd/source-controller";
const VELERO: &str = "github.com/vmware-tanzu/velero";
const SNAPSHOTTER: &str = "github.com/kubernetes-csi/external-snapshotter/client/v8";
const ARGO: &str = "github.com/argoproj/argo-workflows/v3";
const VOLSYNC: &str = "github.com/backube/volsync";

/// Flux HelmRelease (helm.toolkit.fluxcd.io/v2).
pub const HELM_RELEASE: UpstreamSource = src!(
    FLUX_HELM,
    "v1.6.3",
    "config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml"
);
/// Flux HelmRepository. v1.9.3 is the newest source-controller that builds
/// with Go 1.26 (v1.10.x requires go 1.27, which `go mod download` refuses).
pub const HELM_REPOSITORY: UpstreamSource = src!(
    FLUX_SOURCE,
    "v1.9.3",
    "config/crd/bases/source.toolkit.fluxcd.io_helmrepositories.yaml"
);
/// Flux OCIRepository.
pub const OCI_REPOSITORY: UpstreamSource = src!(
    FLUX_SOURCE,
    "v1.9.3",
    "config/crd/bases/source.toolkit.fluxcd.io_ocirepositories.yaml"
);
/// Velero Backup.
pub const VELERO_BACKUP: UpstreamSource = src!(
    VELERO,
    "v1.18.3",
    "config/crd/v1/bases/velero.io_backups.yaml"
);
/// Velero Restore.
pub const VELERO_RESTORE: UpstreamSource = src!(
    VELERO,
    "v1.18.3",
    "config/crd/v1/bases/velero.io_restores.yaml"
);
/// Velero Schedule.
pub const VELERO_SCHEDULE: UpstreamSource = src!(
    VELERO,
    "v1.18.3",
    "config/crd/v1/bases/velero.io_schedules.yaml"
);
/// CSI VolumeSnapshot (snapshot.storage.k8s.io/v1).
pub const VOLUME_SNAPSHOT: UpstreamSource = src!(
    SNAPSHOTTER,
    "v8.7.0",
    "config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml"
);
/// Argo Workflow, the "minimal" CRD (spec/status preserve unknown fields).
pub const ARGO_WORKFLOW: UpstreamSource = src!(
    ARGO,
    "v3.7.3",
    "manifests/base/crds/minimal/argoproj.io_workflows.yaml"
);
/// VolSync ReplicationSource. The proxy refuses v0.12.x, v0.13.0 and v0.14.1;
/// v0.14.0 is the newest version it serves.
pub const VOLSYNC_REPLICATION_SOURCE: UpstreamSource = src!(
    VOLSYNC,
    "v0.14.0",
    "config/crd/bases/volsync.backube_replicationsources.yaml"
);

/// Every third-party upstream CRD the project talks to.
pub const UPSTREAM: &[UpstreamSource] = &[
    HELM_RELEASE,
    HELM_REPOSITORY,
    OCI_REPOSITORY,
    VELERO_BACKUP,
    VELERO_RESTORE,
    VELERO_SCHEDULE,
    VOLUME_SNAPSHOT,
    ARGO_WORKFLOW,
    VOLSYNC_REPLICATION_SOURCE,
];

/// Every CRD the Flux controllers need before they start: all of
/// source-controller's (it refuses to start without `Bucket`, and
/// helm-controller creates `HelmChart`s) and helm-controller's HelmRelease.
pub fn flux_controller_crds() -> Result<Vec<UpstreamCrd>, CrdError> {
    let mut out = vec![upstream_crd(HELM_RELEASE)?];
    out.extend(module_dir_crds(
        FLUX_SOURCE,
        HELM_REPOSITORY.version,
        "config/crd/bases",
    )?);
    Ok(out)
}

/// Every CRD the Velero server watches (`config/crd/v1/bases` and
/// `config/crd/v2alpha1/bases` of the pinned module): it waits for all of
/// them at start, BackupStorageLocation and DataUpload among them.
pub fn velero_server_crds() -> Result<Vec<UpstreamCrd>, CrdError> {
    let mut out = module_dir_crds(VELERO, VELERO_BACKUP.version, "config/crd/v1/bases")?;
    out.extend(module_dir_crds(
        VELERO,
        VELERO_BACKUP.version,
        "config/crd/v2alpha1/bases",
    )?);
    Ok(out)
}

/// Installs [`velero_server_crds`] and waits for them.
pub async fn install_velero_server_crds(
    client: &kube::Client,
) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let sets = tokio::task::spawn_blocking(velero_server_crds)
        .await
        .expect("Velero CRD reader panicked")?;
    let crds = parse_all(&sets)?;
    install(client, &crds).await?;
    Ok(crds)
}

/// Every `*.yaml` in `dir` of a module, sorted by name.
fn module_dir_crds(module: &str, version: &str, dir: &str) -> Result<Vec<UpstreamCrd>, CrdError> {
    let path = module_dir(module, version)?.join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .map_err(|e| CrdError::Read {
            path: path.clone(),
            source: e,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let yaml = std::fs::read_to_string(&file).map_err(|e| CrdError::Read {
                path: file.clone(),
                source: e,
            })?;
            Ok(UpstreamCrd {
                origin: format!(
                    "{module}@{version}/{dir}/{}",
                    file.file_name().unwrap_or_default().to_string_lossy()
                ),
                yaml,
            })
        })
        .collect()
}

/// Installs [`flux_controller_crds`] and waits for them.
pub async fn install_flux_controller_crds(
    client: &kube::Client,
) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let sets = tokio::task::spawn_blocking(flux_controller_crds)
        .await
        .expect("Flux CRD reader panicked")?;
    let crds = parse_all(&sets)?;
    install(client, &crds).await?;
    Ok(crds)
}

/// The module's directory in the Go module cache, downloading it if needed.
///
/// Memoised per process; the module cache itself persists across runs.
pub fn module_dir(module: &str, version: &str) -> Result<PathBuf, CrdError> {
    static DIRS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let key = format!("{module}@{version}");
    // Held across the download so one process never downloads a module twice.
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = dirs.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(dir.clone());
    }
    let fail = |reason: String| CrdError::Module {
        module: module.to_string(),
        version: version.to_string(),
        reason,
    };
    // Outside any module, so the wrapper go.mod is neither read nor touched.
    let out = crate::assets::go_command()
        .current_dir(std::env::temp_dir())
        .args(["mod", "download", "-json", &key])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("running `go mod download`: {e}")))?;
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        fail(format!(
            "unreadable `go mod download -json` output ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    if let Some(err) = info.get("Error").and_then(Value::as_str) {
        return Err(fail(err.to_string()));
    }
    let dir = info
        .get("Dir")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| fail("no Dir in `go mod download -json` output".to_string()))?;
    dirs.get_or_insert_with(HashMap::new)
        .insert(key, dir.clone());
    Ok(dir)
}

/// One upstream CRD document set, with where it came from.
#[derive(Debug, Clone)]
pub struct UpstreamCrd {
    /// `module@version/path`, or the file path for the vWorkspace copies.
    pub origin: String,
    pub yaml: String,
}

impl UpstreamCrd {
    /// The parsed CRDs (conversion webhooks stripped).
    pub fn crds(&self) -> Result<Vec<CustomResourceDefinition>, CrdError> {
        parse(&self.yaml, &self.origin)
    }
}

/// Reads one pinned upstream CRD file from the Go module cache.
pub fn upstream_crd(source: UpstreamSource) -> Result<UpstreamCrd, CrdError> {
    let dir = module_dir(source.module, source.version)?;
    let path = dir.join(source.path);
    let yaml = std::fs::read_to_string(&path).map_err(|e| CrdError::Read { path, source: e })?;
    Ok(UpstreamCrd {
        origin: format!("{}@{}/{}", source.module, source.version, source.path),
        yaml,
    })
}

/// All third-party upstream CRDs in [`UPSTREAM`].
pub fn upstream_crds() -> Result<Vec<UpstreamCrd>, CrdError> {
    UPSTREAM.iter().map(|s| upstream_crd(*s)).collect()
}

/// The `shared` reference directory: `VWS_SHARED_DIR`, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("VWS_SHARED_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// Upstream vWorkspace operator CRD files (ApplicationInstance, Operation, Cluster).
///
/// Read from `<shared>/upstream-crds/vworkspace/` because the operator's Go module
/// is not served by the module proxy.
pub const UPSTREAM_VWORKSPACE_FILES: &[&str] = &[
    "apps.vworkspace.io_applicationinstances.yaml",
    "ops.vworkspace.io_operations.yaml",
    "ops.vworkspace.io_clusters.yaml",
];

/// The upstream vWorkspace CRDs (see [`UPSTREAM_VWORKSPACE_FILES`]).
pub fn upstream_vworkspace_crds() -> Result<Vec<UpstreamCrd>, CrdError> {
    let dir = shared_dir().join("upstream-crds").join("vworkspace");
    UPSTREAM_VWORKSPACE_FILES
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let yaml = std::fs::read_to_string(&path).map_err(|source| CrdError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(UpstreamCrd {
                origin: path.display().to_string(),
                yaml,
            })
        })
        .collect()
}

/// Moves a CRD to group `<prefix>.<group>` so it can sit beside one with the
/// same kind (e.g. the upstream vWorkspace CRDs next to ours).
pub fn regroup(crd: &mut CustomResourceDefinition, prefix: &str) {
    crd.spec.group = format!("{prefix}.{}", crd.spec.group);
    crd.metadata.name = Some(format!("{}.{}", crd.spec.names.plural, crd.spec.group));
}

fn parse_all(sets: &[UpstreamCrd]) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let mut out = Vec::new();
    for set in sets {
        out.extend(set.crds()?);
    }
    Ok(out)
}

/// Installs every third-party upstream CRD ([`UPSTREAM`]) and waits for them.
///
/// Blocking module reads run off the async runtime.
pub async fn install_upstream_crds(
    client: &kube::Client,
) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let sets = tokio::task::spawn_blocking(upstream_crds)
        .await
        .expect("upstream CRD reader panicked")?;
    let crds = parse_all(&sets)?;
    install(client, &crds).await?;
    Ok(crds)
}

/// Installs the upstream vWorkspace CRDs, under `<prefix>.<group>` when a prefix
/// is given (so they do not replace this project's CRDs of the same names).
pub async fn install_upstream_vworkspace_crds(
    client: &kube::Client,
    prefix: Option<&str>,
) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let mut crds = parse_all(&upstream_vworkspace_crds()?)?;
    if let Some(prefix) = prefix {
        crds.iter_mut().for_each(|c| regroup(c, prefix));
    }
    install(client, &crds).await?;
    Ok(crds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: [v1]
      clientConfig: {service: {name: s, namespace: n}}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object}}
status:
  acceptedNames: {kind: "", plural: ""}
  conditions: []
  storedVersions: []
---
"#;

    #[test]
    fn parse_skips_other_kinds_and_strips_webhook_conversion() {
        let crds = parse(TWO_DOCS, "test").unwrap();
        assert_eq!(crds.len(), 1);
        assert_eq!(crds[0].spec.names.kind, "Widget");
        assert!(crds[0].spec.conversion.is_none());
        assert!(crds[0].status.is_none());
    }

    #[test]
    fn parse_keeps_none_conversion() {
        let text = TWO_DOCS.replace("strategy: Webhook", "strategy: None");
        let text = text.replace(
            "    webhook:\n      conversionReviewVersions: [v1]\n      clientConfig: {service: {name: s, namespace: n}}\n",
            "",
        );
        let crds = parse(&text, "test").unwrap();
        assert_eq!(
            crds[0]
                .spec
                .conversion
                .as_ref()
                .map(|c| c.strategy.as_str()),
            Some("None")
        );
    }

    #[test]
    fn regroup_renames_group_and_name() {
        let mut crd = parse(TWO_DOCS, "test").unwrap().remove(0);
        regroup(&mut crd, "upstream");
        assert_eq!(crd.spec.group, "upstream.example.com");
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("widgets.upstream.example.com")
        );
    }

    #[test]
    fn flux_crd_versions_are_the_versions_the_harness_runs() {
        let pins = crate::assets::flux_versions().unwrap();
        assert_eq!(HELM_RELEASE.version, pins.helm_controller);
        assert_eq!(HELM_REPOSITORY.version, pins.source_controller);
        assert_eq!(OCI_REPOSITORY.version, pins.source_controller);
        let velero = crate::assets::velero_versions().unwrap();
        assert_eq!(VELERO_BACKUP.version, velero.velero);
    }
}
