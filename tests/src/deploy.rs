//! The deployment bundle in `deploy/`: where its files are, the committed
//! files generated from other files, and applying YAML documents.
//!
//! The agent's chart is rendered by the real helm ([`crate::helm`]). The plain
//! manifests for kubectl users (`deploy/manifests/vworkspace-agent.yaml`) are
//! [`plain_bundle`]: a Namespace, then `helm template --include-crds` of the
//! chart with its default values for [`DEFAULT_RELEASE`]. The chart's `crds/`
//! directory and `templates/policies.yaml` are copies of `crds/manifests/`.
//! [`check_committed`] fails when any of them is stale, and `VWS_UPDATE_DEPLOY=1`
//! with the test in [`REGENERATE`] rewrites them.

use std::path::{Path, PathBuf};

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::Value;

use crate::helm::{Helm, HelmError, Release};

/// The command that regenerates the committed deploy files (from the repository root).
pub const REGENERATE: &str = "VWS_UPDATE_DEPLOY=1 cargo test -p vworkspace-e2e --test deploy_chart committed_deploy_files_are_up_to_date";

/// The CRD files the chart ships, copied from `crds/manifests/`.
pub const CRD_FILES: &[&str] = &[
    "applicationinstances.apps.vworkspace.io.yaml",
    "operations.ops.vworkspace.io.yaml",
    "clusters.ops.vworkspace.io.yaml",
];

/// Generated manifests the chart ships as templates (no template syntax in
/// them), copied from `crds/manifests/` into `templates/`.
pub const COPIED_TEMPLATES: &[&str] = &["policies.yaml"];

/// Release name and namespace of the committed plain manifests.
pub const DEFAULT_RELEASE: Release<'static> = Release {
    name: "vworkspace-agent",
    namespace: "vworkspace-system",
};

/// Why a deploy file could not be generated, checked or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error(transparent)]
    Helm(#[from] HelmError),
    /// A committed file differs from what it is generated from.
    #[error("{path} is stale or missing; regenerate from the repository root with `{REGENERATE}`")]
    Stale { path: PathBuf },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {what}: the API server does not serve {api_version} {kind}")]
    UnknownKind {
        what: String,
        api_version: String,
        kind: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeployError + '_ {
    move |source| DeployError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, DeployError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn repo_root() -> &'static Path {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests)
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The agent chart's directory.
pub fn chart_dir() -> PathBuf {
    deploy_dir().join("chart/vworkspace-agent")
}

/// The committed plain manifests.
pub fn plain_manifest_path() -> PathBuf {
    deploy_dir().join("manifests/vworkspace-agent.yaml")
}

fn crds_source_dir() -> PathBuf {
    repo_root().join("crds/manifests")
}

/// The plain manifests for `release`: a comment header, the release
/// Namespace, then `helm template --include-crds` of `chart` with `values`
/// (null: the chart's defaults), verbatim.
///
/// Helm itself creates no namespace (`--create-namespace` does, and
/// `helm template` renders none); kubectl users get one here so a single
/// `kubectl apply` works.
pub fn plain_bundle(
    helm: &Helm,
    chart: &Path,
    release: Release<'_>,
    values: &Value,
) -> Result<String, DeployError> {
    let chart_name = chart
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("chart");
    let rendered = helm.template(release, chart, values, &["--include-crds"])?;
    Ok(format!(
        "# Plain manifests of the {chart_name} Helm chart (deploy/chart/{chart_name}),\n\
         # `helm template --include-crds` with its default values for release {name:?}\n\
         # in namespace {ns:?}, after a Namespace for the release.\n\
         # Generated; do not edit. Regenerate from the repository root:\n\
         #   {REGENERATE}\n\
         ---\n\
         apiVersion: v1\n\
         kind: Namespace\n\
         metadata:\n  name: {ns}\n\
         {rendered}",
        name = release.name,
        ns = release.namespace,
    ))
}

/// Parses a multi-document YAML text into its non-empty documents.
pub fn documents(text: &str) -> Result<Vec<Value>, DeployError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| DeployError::Yaml {
        origin: "manifests".into(),
        message: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every committed file copied from `crds/manifests/`: the chart's CRDs and admission policy.
pub fn expected_copies() -> Result<Vec<(PathBuf, String)>, DeployError> {
    let chart = chart_dir();
    let mut files = Vec::new();
    for file in CRD_FILES {
        let src = crds_source_dir().join(file);
        files.push((chart.join("crds").join(file), read(&src)?));
    }
    for file in COPIED_TEMPLATES {
        let src = crds_source_dir().join(file);
        files.push((chart.join("templates").join(file), read(&src)?));
    }
    Ok(files)
}

/// Checks that the chart's copies match `crds/manifests/` and that the plain
/// manifests match what `helm template` renders now.
pub fn check_committed(helm: &Helm) -> Result<(), DeployError> {
    let compare = |path: &Path, want: &str| match std::fs::read_to_string(path) {
        Ok(have) if have == want => Ok(()),
        Ok(_) => Err(DeployError::Stale {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DeployError::Stale {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(DeployError::Io {
            path: path.to_path_buf(),
            source,
        }),
    };
    for (path, want) in expected_copies()? {
        compare(&path, &want)?;
    }
    let bundle = plain_bundle(helm, &chart_dir(), DEFAULT_RELEASE, &Value::Null)?;
    compare(&plain_manifest_path(), &bundle)
}

/// Rewrites the chart's copies, then the plain manifests rendered from the chart.
pub fn write_committed(helm: &Helm) -> Result<Vec<PathBuf>, DeployError> {
    let mut written = Vec::new();
    let write = |path: &Path, text: &str| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::write(path, text).map_err(io(path))
    };
    for (path, text) in expected_copies()? {
        write(&path, &text)?;
        written.push(path);
    }
    let bundle = plain_bundle(helm, &chart_dir(), DEFAULT_RELEASE, &Value::Null)?;
    let path = plain_manifest_path();
    write(&path, &bundle)?;
    written.push(path);
    Ok(written)
}

/// Applies `docs` in order by server-side apply (field manager `field_manager`),
/// resolving each kind through discovery. CRDs in `docs` should be installed
/// and established first (see [`crate::crds::install`]); they are skipped here.
pub async fn apply(
    client: &kube::Client,
    docs: &[Value],
    field_manager: &str,
) -> Result<(), DeployError> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|source| DeployError::Apply {
            what: "discovery".into(),
            source,
        })?;
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind == "CustomResourceDefinition" {
            continue;
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
        let what = format!(
            "{kind} {}{name}",
            ns.as_deref().map(|n| format!("{n}/")).unwrap_or_default()
        );
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let found: Option<(ApiResource, ApiCapabilities)> = discovery.get(&group).and_then(|g| {
            g.versioned_resources(&version)
                .into_iter()
                .find(|(r, _)| r.kind == kind)
        });
        let Some((ar, caps)) = found else {
            return Err(DeployError::UnknownKind {
                what,
                api_version,
                kind,
            });
        };
        let api: kube::Api<DynamicObject> = match (caps.scope, ns.as_deref()) {
            (Scope::Namespaced, Some(ns)) => kube::Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Namespaced, None) => kube::Api::default_namespaced_with(client.clone(), &ar),
            (Scope::Cluster, _) => kube::Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(doc),
        )
        .await
        .map_err(|source| DeployError::Apply { what, source })?;
    }
    Ok(())
}
