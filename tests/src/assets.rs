//! Finds the upstream binaries the harness runs, or builds them from Go modules.
//!
//! Three sets, each from a wrapper Go module of its own under `tests/` (their
//! `k8s.io` versions differ, and one module would let minimal version
//! selection raise the others'):
//!
//! | set | module | binaries |
//! | --- | --- | --- |
//! | [`ControlPlaneSet`] | `k8s-bins` | kube-apiserver, etcd, kubectl, kube-controller-manager |
//! | [`FluxSet`] | `flux-bins` | source-controller, helm-controller, helm |
//! | [`RegistrySet`] | `oci-registry` | registry (CNCF distribution) |
//! | [`VeleroSet`] | `velero-bins` | velero, velero-plugin-for-aws, gofakes3 |
//!
//! Lookup order per binary, as controller-runtime's envtest does it:
//! 1. its own variable (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_HELM`, …);
//! 2. the set's directory variable (`KUBEBUILDER_ASSETS`, `VWS_FLUX_ASSETS`,
//!    `VWS_REGISTRY_ASSETS`) when it holds the binary;
//! 3. the build cache `${XDG_CACHE_HOME:-$HOME/.cache}/vworkspace/<module>/<key>-go<G>/`,
//!    filled on first use by `go build` of the wrapper module (the key names the
//!    pinned versions from its go.mod, G is `go env GOVERSION`).
//!
//! A build runs under an exclusive `flock` so parallel test binaries build once,
//! writes into a `.tmp` sibling and renames it into place, so a half-built
//! directory is never used. Nothing is ever skipped: without binaries and
//! without Go the error says how to fix it.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The wrapper modules' go.mod files: the single source of the pinned versions.
const K8S_GO_MOD: &str = include_str!("../k8s-bins/go.mod");
const FLUX_GO_MOD: &str = include_str!("../flux-bins/go.mod");
const REGISTRY_GO_MOD: &str = include_str!("../oci-registry/go.mod");
const VELERO_GO_MOD: &str = include_str!("../velero-bins/go.mod");

/// What to do when no binaries are found; included in every asset error.
pub const HOW_TO_FIX: &str = "to fix: either point the TEST_ASSET_* variables or the set's \
directory variable (KUBEBUILDER_ASSETS for kube-apiserver/etcd/kubectl/kube-controller-manager, \
e.g. from `setup-envtest use -p path 1.37.x`; VWS_FLUX_ASSETS for source-controller/\
helm-controller/helm; VWS_REGISTRY_ASSETS for registry; VWS_VELERO_ASSETS for velero/\
velero-plugin-for-aws/gofakes3) at existing binaries, \
or install Go >= 1.26 (the `go` command on PATH, with access to the Go module proxy) so the \
harness can build them from the wrapper modules in tests/ (takes several minutes once, then cached)";

/// Why the binaries could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssetError {
    /// An explicitly configured path does not exist.
    #[error("{var}={path} does not point to an executable file; {HOW_TO_FIX}")]
    Missing { var: &'static str, path: PathBuf },
    /// No Go toolchain and no cached binaries.
    #[error(
        "no {set} binaries found (cache {cache} empty) and the Go toolchain is unusable \
         ({reason}); {HOW_TO_FIX}"
    )]
    NoGo {
        set: &'static str,
        cache: PathBuf,
        reason: String,
    },
    /// `go build` failed.
    #[error(
        "building {what} with `go build` failed ({status}); see the go output above (a refused \
         module shows as `403 Forbidden` or `not found`: check the versions pinned in \
         tests/{module}/go.mod); {HOW_TO_FIX}"
    )]
    Build {
        what: String,
        module: &'static str,
        status: String,
    },
    /// Filesystem trouble around the cache.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A wrapper go.mod does not name a pinned version.
    #[error("tests/{module}/go.mod does not pin {what}")]
    GoMod {
        module: &'static str,
        what: &'static str,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> AssetError {
    let context = context.into();
    move |source| AssetError::Io { context, source }
}

/// The version a go.mod requires (or replaces to) for `module`.
///
/// A `replace module => module vX` line wins over the require line, since that
/// is what gets built.
pub fn go_mod_version(text: &str, module: &str) -> Option<String> {
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let replaced = text.lines().find_map(|line| {
        let w = words(line.trim_start_matches("replace").trim());
        match w.as_slice() {
            [m, arrow, _, v, ..] if m == module && arrow == "=>" && v.starts_with('v') => {
                Some(v.clone())
            }
            _ => None,
        }
    });
    replaced.or_else(|| {
        text.lines().find_map(|line| {
            let w = words(line.trim_start_matches("require").trim());
            match w.as_slice() {
                [m, v, ..] if m == module && v.starts_with('v') => Some(v.clone()),
                _ => None,
            }
        })
    })
}

/// One binary of a set.
#[derive(Debug, Clone)]
struct Target {
    /// File name in the cache directory.
    file: &'static str,
    /// Go package to build.
    package: &'static str,
    /// Its own variable (step 1 of the lookup).
    var: &'static str,
    /// `-ldflags` (always stripped; version stamps where the binary reports one).
    ldflags: String,
}

/// A set of binaries built from one wrapper module.
#[derive(Debug, Clone)]
struct BinSet {
    /// Module directory under `tests/`, and the cache directory's parent name.
    module: &'static str,
    /// The directory variable (step 2 of the lookup).
    dir_var: &'static str,
    /// Cache directory name without the Go version, e.g. `k8s-v1.37.2-etcd-v3.7.0`.
    key: String,
    /// What a newcomer is told is being built.
    summary: String,
    targets: Vec<Target>,
}

/// kube-apiserver, etcd, kubectl and kube-controller-manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    /// `kubectl` is optional, as in envtest.
    pub kubectl: Option<PathBuf>,
    /// Optional too: only tests that need garbage collection or namespace
    /// deletion start it ([`crate::upstream::ControllerManager`]), and it is resolved when they do.
    pub kube_controller_manager: Option<PathBuf>,
}

/// The control-plane set's name in messages.
pub type ControlPlaneSet = Assets;

/// Flux source-controller, helm-controller and the helm CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxSet {
    pub source_controller: PathBuf,
    pub helm_controller: PathBuf,
    pub helm: PathBuf,
}

/// The OCI registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySet {
    pub registry: PathBuf,
}

/// The Velero server, its AWS object-store plugin and the S3-compatible store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeleroSet {
    pub velero: PathBuf,
    /// Must sit alone in Velero's `--plugin-dir`: Velero runs every file there.
    pub aws_plugin: PathBuf,
    /// gofakes3 (MIT), an S3 API over a directory.
    pub gofakes3: PathBuf,
}

/// Versions pinned by tests/k8s-bins/go.mod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedVersions {
    /// e.g. `v1.37.2`.
    pub kubernetes: String,
    /// e.g. `v3.7.0`.
    pub etcd: String,
}

/// Reads the pinned Kubernetes and etcd versions from a go.mod text.
pub fn parse_go_mod(text: &str) -> Result<PinnedVersions, AssetError> {
    let pin = |what| {
        go_mod_version(text, what).ok_or(AssetError::GoMod {
            module: "k8s-bins",
            what,
        })
    };
    Ok(PinnedVersions {
        kubernetes: pin("k8s.io/kubernetes")?,
        etcd: pin("go.etcd.io/etcd/server/v3")?,
    })
}

/// The versions this harness runs.
pub fn pinned_versions() -> PinnedVersions {
    parse_go_mod(K8S_GO_MOD).expect("tests/k8s-bins/go.mod pins k8s.io/kubernetes and etcd")
}

/// Flux versions pinned by tests/flux-bins/go.mod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxVersions {
    pub source_controller: String,
    pub helm_controller: String,
    pub helm: String,
}

/// Reads the pinned Flux and Helm versions.
pub fn flux_versions() -> Result<FluxVersions, AssetError> {
    let pin = |what| {
        go_mod_version(FLUX_GO_MOD, what).ok_or(AssetError::GoMod {
            module: "flux-bins",
            what,
        })
    };
    Ok(FluxVersions {
        source_controller: pin("github.com/fluxcd/source-controller")?,
        helm_controller: pin("github.com/fluxcd/helm-controller")?,
        helm: pin("helm.sh/helm/v4")?,
    })
}

/// The pinned registry version.
pub fn registry_version() -> Result<String, AssetError> {
    go_mod_version(REGISTRY_GO_MOD, "github.com/distribution/distribution/v3").ok_or(
        AssetError::GoMod {
            module: "oci-registry",
            what: "github.com/distribution/distribution/v3",
        },
    )
}

/// Versions pinned by tests/velero-bins/go.mod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeleroVersions {
    pub velero: String,
    pub aws_plugin: String,
    pub gofakes3: String,
}

/// Reads the pinned Velero, AWS plugin and gofakes3 versions.
pub fn velero_versions() -> Result<VeleroVersions, AssetError> {
    let pin = |what| {
        go_mod_version(VELERO_GO_MOD, what).ok_or(AssetError::GoMod {
            module: "velero-bins",
            what,
        })
    };
    Ok(VeleroVersions {
        velero: pin("github.com/vmware-tanzu/velero")?,
        aws_plugin: pin("github.com/vmware-tanzu/velero-plugin-for-aws")?,
        gofakes3: pin("github.com/johannesboyne/gofakes3")?,
    })
}

fn k8s_set() -> BinSet {
    let v = pinned_versions();
    let minor = v
        .kubernetes
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .unwrap_or("0")
        .to_string();
    let ldflags = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={k} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean",
        k = v.kubernetes
    );
    let k8s = |file, package, var| Target {
        file,
        package,
        var,
        ldflags: ldflags.clone(),
    };
    BinSet {
        module: "k8s-bins",
        dir_var: "KUBEBUILDER_ASSETS",
        key: format!("k8s-{}-etcd-{}", v.kubernetes, v.etcd),
        summary: format!(
            "kube-apiserver, kubectl, kube-controller-manager (k8s.io/kubernetes {}) and etcd {}",
            v.kubernetes, v.etcd
        ),
        targets: vec![
            k8s(
                "kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-apiserver",
                "TEST_ASSET_KUBE_APISERVER",
            ),
            k8s(
                "kubectl",
                "k8s.io/kubernetes/cmd/kubectl",
                "TEST_ASSET_KUBECTL",
            ),
            k8s(
                "kube-controller-manager",
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "TEST_ASSET_KUBE_CONTROLLER_MANAGER",
            ),
            Target {
                file: "etcd",
                package: "go.etcd.io/etcd/server/v3",
                var: "TEST_ASSET_ETCD",
                ldflags: "-s -w".into(),
            },
        ],
    }
}

fn flux_set() -> Result<BinSet, AssetError> {
    let v = flux_versions()?;
    let plain = |file, package, var| Target {
        file,
        package,
        var,
        ldflags: "-s -w".into(),
    };
    Ok(BinSet {
        module: "flux-bins",
        dir_var: "VWS_FLUX_ASSETS",
        key: format!(
            "sc-{}-hc-{}-helm-{}",
            v.source_controller, v.helm_controller, v.helm
        ),
        summary: format!(
            "Flux source-controller {}, helm-controller {} and helm {}",
            v.source_controller, v.helm_controller, v.helm
        ),
        targets: vec![
            plain(
                "source-controller",
                "github.com/fluxcd/source-controller",
                "TEST_ASSET_SOURCE_CONTROLLER",
            ),
            plain(
                "helm-controller",
                "github.com/fluxcd/helm-controller",
                "TEST_ASSET_HELM_CONTROLLER",
            ),
            Target {
                file: "helm",
                package: "helm.sh/helm/v4/cmd/helm",
                var: "TEST_ASSET_HELM",
                ldflags: format!(
                    "-s -w -X helm.sh/helm/v4/internal/version.version={}",
                    v.helm
                ),
            },
        ],
    })
}

fn registry_set() -> Result<BinSet, AssetError> {
    let v = registry_version()?;
    Ok(BinSet {
        module: "oci-registry",
        dir_var: "VWS_REGISTRY_ASSETS",
        key: format!("distribution-{v}"),
        summary: format!("the OCI registry (distribution {v})"),
        targets: vec![Target {
            file: "registry",
            package: "github.com/distribution/distribution/v3/cmd/registry",
            var: "TEST_ASSET_OCI_REGISTRY",
            ldflags: format!(
                "-s -w -X github.com/distribution/distribution/v3/version.version={v}"
            ),
        }],
    })
}

fn velero_set() -> Result<BinSet, AssetError> {
    let v = velero_versions()?;
    let plain = |file, package, var| Target {
        file,
        package,
        var,
        ldflags: "-s -w".into(),
    };
    Ok(BinSet {
        module: "velero-bins",
        dir_var: "VWS_VELERO_ASSETS",
        key: format!(
            "velero-{}-aws-{}-gofakes3-{}",
            v.velero, v.aws_plugin, v.gofakes3
        ),
        summary: format!(
            "Velero {}, velero-plugin-for-aws {} and gofakes3 {}",
            v.velero, v.aws_plugin, v.gofakes3
        ),
        targets: vec![
            plain(
                "gofakes3",
                "github.com/johannesboyne/gofakes3/cmd/gofakes3",
                "TEST_ASSET_GOFAKES3",
            ),
            plain(
                "velero-plugin-for-aws",
                "github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws",
                "TEST_ASSET_VELERO_PLUGIN_FOR_AWS",
            ),
            Target {
                file: "velero",
                package: "github.com/vmware-tanzu/velero/cmd/velero",
                var: "TEST_ASSET_VELERO",
                ldflags: format!(
                    "-s -w -X github.com/vmware-tanzu/velero/pkg/buildinfo.Version={}",
                    v.velero
                ),
            },
        ],
    })
}

/// The wrapper Go module directory of a set (`tests/<module>`).
fn module_dir(module: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(module)
}

/// The k8s-bins wrapper module directory (tests/k8s-bins).
pub fn wrapper_module_dir() -> PathBuf {
    module_dir("k8s-bins")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/vworkspace`.
fn cache_base() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/tmp")))
                .join(".cache")
        });
    base.join("vworkspace")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/vworkspace/k8s-bins`.
pub fn cache_root() -> PathBuf {
    cache_base().join("k8s-bins")
}

fn env_path(var: &'static str) -> Result<Option<PathBuf>, AssetError> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(p) => {
            let path = PathBuf::from(p);
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(AssetError::Missing { var, path })
            }
        }
    }
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Paths for every target of `set`, by the lookup order; builds the cache only
/// when a `required` target is found nowhere else. Optional targets missing
/// from the explicit places are taken from the cache only if it is complete.
fn lookup(
    set: &BinSet,
    required: &[&str],
) -> Result<std::collections::BTreeMap<&'static str, Option<PathBuf>>, AssetError> {
    let mut found = std::collections::BTreeMap::new();
    let dir = env_dir(set.dir_var);
    for t in &set.targets {
        let path = match env_path(t.var)? {
            Some(p) => Some(p),
            None => dir.as_ref().map(|d| d.join(t.file)).filter(|p| p.is_file()),
        };
        found.insert(t.file, path);
    }
    if let Some(d) = &dir {
        // A set directory that lacks a required binary the variables do not
        // supply is a configuration error, as envtest treats it; only the
        // controller manager, which setup-envtest does not ship, comes from the cache.
        for r in required {
            if found[r].is_none() && *r != "kube-controller-manager" {
                return Err(AssetError::Missing {
                    var: set.dir_var,
                    path: d.join(r),
                });
            }
        }
    }
    let missing_required = required.iter().any(|r| found[r].is_none());
    let missing_any = found.values().any(Option::is_none);
    if missing_required || (missing_any && complete(&cache_dir_any(set), set)) {
        let cache = if missing_required {
            build_cached(set)?
        } else {
            cache_dir_any(set)
        };
        for (file, path) in found.iter_mut() {
            if path.is_none() {
                *path = Some(cache.join(file)).filter(|p| p.is_file());
            }
        }
    }
    Ok(found)
}

fn complete(dir: &Path, set: &BinSet) -> bool {
    set.targets.iter().all(|t| dir.join(t.file).is_file())
}

/// The cache directory for the current Go, or any complete earlier one.
fn cache_dir_any(set: &BinSet) -> PathBuf {
    let root = cache_base().join(set.module);
    if let Ok(go) = go_version() {
        return root.join(format!("{}-go{go}", set.key));
    }
    fs::read_dir(&root)
        .ok()
        .and_then(|rd| {
            rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{}-go", set.key)) && !n.ends_with(".tmp")
                }) && complete(p, set)
            })
        })
        .unwrap_or_else(|| root.join(format!("{}-go-unknown", set.key)))
}

/// The value in `cell`, computing and keeping it on first success.
fn memoised<T: Clone>(
    cell: &OnceLock<T>,
    resolve: impl FnOnce() -> Result<T, AssetError>,
) -> Result<T, AssetError> {
    if let Some(v) = cell.get() {
        return Ok(v.clone());
    }
    let v = resolve()?;
    Ok(cell.get_or_init(|| v).clone())
}

/// Resolves kube-apiserver, etcd and kubectl, building them into the cache
/// when needed (minutes, once). Memoised for the process.
pub fn resolve() -> Result<Assets, AssetError> {
    static RESOLVED: OnceLock<Assets> = OnceLock::new();
    memoised(&RESOLVED, || {
        let found = lookup(&k8s_set(), &["kube-apiserver", "etcd"])?;
        let a = Assets {
            kube_apiserver: found["kube-apiserver"].clone().expect("required"),
            etcd: found["etcd"].clone().expect("required"),
            kubectl: found["kubectl"].clone(),
            kube_controller_manager: found["kube-controller-manager"].clone(),
        };
        Ok(a)
    })
}

/// Resolves kube-controller-manager (built with the control-plane set when missing).
pub fn resolve_controller_manager() -> Result<PathBuf, AssetError> {
    static RESOLVED: OnceLock<PathBuf> = OnceLock::new();
    memoised(&RESOLVED, || {
        let found = lookup(&k8s_set(), &["kube-controller-manager"])?;
        Ok(found["kube-controller-manager"].clone().expect("required"))
    })
}

/// Resolves the Flux controllers and helm (built once, ~7 minutes on 2 cores).
pub fn resolve_flux() -> Result<FluxSet, AssetError> {
    static RESOLVED: OnceLock<FluxSet> = OnceLock::new();
    memoised(&RESOLVED, || {
        let files = ["source-controller", "helm-controller", "helm"];
        let found = lookup(&flux_set()?, &files)?;
        let a = FluxSet {
            source_controller: found["source-controller"].clone().expect("required"),
            helm_controller: found["helm-controller"].clone().expect("required"),
            helm: found["helm"].clone().expect("required"),
        };
        Ok(a)
    })
}

/// Resolves the helm CLI alone (`TEST_ASSET_HELM`, `VWS_FLUX_ASSETS`, else the
/// Flux set's cache, built with the controllers when missing).
pub fn resolve_helm() -> Result<PathBuf, AssetError> {
    static RESOLVED: OnceLock<PathBuf> = OnceLock::new();
    memoised(&RESOLVED, || {
        let found = lookup(&flux_set()?, &["helm"])?;
        Ok(found["helm"].clone().expect("required"))
    })
}

/// Resolves the OCI registry (built once, ~3 minutes on 2 cores).
pub fn resolve_registry() -> Result<RegistrySet, AssetError> {
    static RESOLVED: OnceLock<RegistrySet> = OnceLock::new();
    memoised(&RESOLVED, || {
        let found = lookup(&registry_set()?, &["registry"])?;
        let a = RegistrySet {
            registry: found["registry"].clone().expect("required"),
        };
        Ok(a)
    })
}

/// Resolves Velero, its AWS plugin and gofakes3 (built once, ~10 minutes on 2 cores).
pub fn resolve_velero() -> Result<VeleroSet, AssetError> {
    static RESOLVED: OnceLock<VeleroSet> = OnceLock::new();
    memoised(&RESOLVED, || {
        let files = ["velero", "velero-plugin-for-aws", "gofakes3"];
        let found = lookup(&velero_set()?, &files)?;
        let a = VeleroSet {
            velero: found["velero"].clone().expect("required"),
            aws_plugin: found["velero-plugin-for-aws"].clone().expect("required"),
            gofakes3: found["gofakes3"].clone().expect("required"),
        };
        Ok(a)
    })
}

/// What a first run would build: one line per set whose cache is missing.
///
/// Empty when everything is cached or supplied; the demo prints it once.
pub fn pending_builds() -> Vec<String> {
    let mut sets = vec![k8s_set()];
    sets.extend(flux_set());
    sets.extend(registry_set());
    sets.extend(velero_set());
    sets.into_iter()
        .filter(|set| {
            let explicit = set
                .targets
                .iter()
                .all(|t| env_path(t.var).ok().flatten().is_some())
                || env_dir(set.dir_var).is_some_and(|d| complete(&d, set));
            !explicit && !complete(&cache_dir_any(set), set)
        })
        .map(|set| set.summary)
        .collect()
}

/// The Go version string without the `go` prefix, e.g. `1.26.8`.
fn go_version() -> Result<String, String> {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let out = go_command()
                .args(["env", "GOVERSION"])
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("running `go env GOVERSION`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`go env GOVERSION` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(v.strip_prefix("go").unwrap_or(&v).to_string())
        })
        .clone()
}

/// A `go` command with the environment every invocation here needs.
pub(crate) fn go_command() -> Command {
    let mut cmd = Command::new(std::env::var_os("GO").unwrap_or_else(|| "go".into()));
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    cmd
}

/// Returns the set's cache directory with all its binaries, building it if missing.
fn build_cached(set: &BinSet) -> Result<PathBuf, AssetError> {
    let root = cache_base().join(set.module);
    let go = match go_version() {
        Ok(v) => v,
        Err(reason) => {
            // No usable Go: an earlier build by any Go version still serves.
            let any = cache_dir_any(set);
            if complete(&any, set) {
                return Ok(any);
            }
            return Err(AssetError::NoGo {
                set: set.module,
                cache: root,
                reason,
            });
        }
    };
    let name = format!("{}-go{go}", set.key);
    let dir = root.join(&name);
    if complete(&dir, set) {
        return Ok(dir);
    }
    fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    let lock_path = root.join(format!("{name}.lock"));
    let lock =
        File::create(&lock_path).map_err(io_err(format!("creating {}", lock_path.display())))?;
    // SAFETY: flock on a valid open descriptor; released when `lock` is dropped.
    let locked = |flags| unsafe { libc::flock(lock.as_raw_fd(), flags) } == 0;
    if !locked(libc::LOCK_EX | libc::LOCK_NB) {
        eprintln!(
            "another process is building {}; waiting for {} …",
            set.summary,
            lock_path.display()
        );
        if !locked(libc::LOCK_EX) {
            return Err(AssetError::Io {
                context: format!("locking {}", lock_path.display()),
                source: io::Error::last_os_error(),
            });
        }
    }
    if complete(&dir, set) {
        return Ok(dir); // another process built it while we waited
    }
    let tmp = root.join(format!("{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    eprintln!(
        "building {} from tests/{} with go {go} (first run on this machine: several minutes \
         on 2 cores, then cached in {})",
        set.summary,
        set.module,
        dir.display()
    );
    let started = Instant::now();
    build_into(set, &tmp)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err(format!("renaming {} into place", tmp.display())))?;
    eprintln!(
        "built {} in {:.0?}, cached in {}",
        set.summary,
        started.elapsed(),
        dir.display()
    );
    drop(lock);
    Ok(dir)
}

/// Runs one `go build` per target of the wrapper module into `out`.
fn build_into(set: &BinSet, out: &Path) -> Result<(), AssetError> {
    for t in &set.targets {
        eprintln!("building {} ({}) …", t.file, t.package);
        let started = Instant::now();
        let status = go_command()
            .current_dir(module_dir(set.module))
            .args(["build", "-v", "-trimpath", "-ldflags", &t.ldflags, "-o"])
            .arg(out.join(t.file))
            .arg(t.package)
            // Streamed so a developer sees progress; goes around libtest's capture.
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(io_err(format!("running `go build` for {}", t.file)))?;
        if !status.success() {
            return Err(AssetError::Build {
                what: t.file.to_string(),
                module: set.module,
                status: status.to_string(),
            });
        }
        eprintln!("built {} in {:.0?}", t.file, started.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_pins_versions() {
        let v = parse_go_mod(K8S_GO_MOD).unwrap();
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
    }

    #[test]
    fn go_mod_without_pins_is_an_error() {
        let err = parse_go_mod("module x\n\ngo 1.26\n").unwrap_err();
        assert!(err.to_string().contains("k8s.io/kubernetes"), "{err}");
    }

    #[test]
    fn a_replace_wins_over_the_require_line() {
        let text = "require (\n\thelm.sh/helm/v4 v4.2.4-flux.1 // indirect\n)\n\
                    replace helm.sh/helm/v4 => helm.sh/helm/v4 v4.2.4\n";
        assert_eq!(
            go_mod_version(text, "helm.sh/helm/v4").as_deref(),
            Some("v4.2.4")
        );
        assert_eq!(go_mod_version(text, "helm.sh/helm"), None);
    }

    #[test]
    fn flux_and_registry_pins_are_read() {
        let v = flux_versions().unwrap();
        assert_eq!(v.helm_controller, "v1.6.3");
        assert_eq!(v.source_controller, "v1.9.3");
        assert_eq!(v.helm, "v4.2.4");
        assert!(registry_version().unwrap().starts_with("v3."));
        let v = velero_versions().unwrap();
        assert_eq!(v.velero, "v1.18.3");
        assert_eq!(v.aws_plugin, "v1.14.3");
        assert_eq!(v.gofakes3, "v1.2.0");
    }

    #[test]
    fn every_set_builds_every_binary_the_harness_runs() {
        let files = |s: BinSet| s.targets.iter().map(|t| t.file).collect::<Vec<_>>();
        assert_eq!(
            files(k8s_set()),
            [
                "kube-apiserver",
                "kubectl",
                "kube-controller-manager",
                "etcd"
            ]
        );
        assert_eq!(
            files(flux_set().unwrap()),
            ["source-controller", "helm-controller", "helm"]
        );
        assert_eq!(files(registry_set().unwrap()), ["registry"]);
        assert_eq!(
            files(velero_set().unwrap()),
            ["gofakes3", "velero-plugin-for-aws", "velero"]
        );
    }

    #[test]
    fn fix_message_names_every_way() {
        for needle in [
            "KUBEBUILDER_ASSETS",
            "VWS_FLUX_ASSETS",
            "VWS_REGISTRY_ASSETS",
            "VWS_VELERO_ASSETS",
            "Go >= 1.26",
        ] {
            assert!(HOW_TO_FIX.contains(needle), "{needle}");
        }
    }
}
