//! Finds the `kube-apiserver`, `etcd` and `kubectl` binaries, or builds them.
//!
//! Lookup order, as controller-runtime's envtest does it:
//! 1. `TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`, `TEST_ASSET_KUBECTL` (per binary);
//! 2. the `KUBEBUILDER_ASSETS` directory;
//! 3. the build cache
//!    `${XDG_CACHE_HOME:-$HOME/.cache}/vworkspace/k8s-bins/k8s-<K>-etcd-<E>-go<G>/`,
//!    filled on first use by `go build` of the wrapper module in `tests/k8s-bins`
//!    (versions K and E come from its go.mod, G from `go env GOVERSION`).
//!
//! The build runs under an exclusive `flock` so parallel test binaries build once,
//! writes into a `.tmp` sibling and renames it into place, so a half-built
//! directory is never used.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The wrapper module's go.mod: the single source of the pinned versions.
const GO_MOD: &str = include_str!("../k8s-bins/go.mod");

/// What to do when no binaries are found; included in every asset error.
pub const HOW_TO_FIX: &str = "to fix: either set KUBEBUILDER_ASSETS to a directory holding \
`kube-apiserver` and `etcd` (and optionally `kubectl`), e.g. from `setup-envtest use -p path 1.37.x`, \
or install Go >= 1.26 (the `go` command on PATH, with access to the Go module proxy) so the \
harness can build them from tests/k8s-bins (takes several minutes once, then cached)";

/// Why the binaries could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssetError {
    /// An explicitly configured path does not exist.
    #[error("{var}={path} does not point to an executable file; {HOW_TO_FIX}")]
    Missing { var: &'static str, path: PathBuf },
    /// No Go toolchain and no cached binaries.
    #[error(
        "no kube-apiserver/etcd binaries found (KUBEBUILDER_ASSETS unset, cache {cache} empty) \
         and the Go toolchain is unusable ({reason}); {HOW_TO_FIX}"
    )]
    NoGo { cache: PathBuf, reason: String },
    /// `go build` failed.
    #[error(
        "building {what} with `go build` failed ({status}); see the go output above; {HOW_TO_FIX}"
    )]
    Build { what: String, status: String },
    /// Filesystem trouble around the cache.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// tests/k8s-bins/go.mod does not name the pinned versions.
    #[error("tests/k8s-bins/go.mod does not pin {0}")]
    GoMod(&'static str),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> AssetError {
    let context = context.into();
    move |source| AssetError::Io { context, source }
}

/// Paths to the control-plane binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    /// `kubectl` is optional, as in envtest.
    pub kubectl: Option<PathBuf>,
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
    let find = |module: &str| {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(m), Some(v)) if m == module && v.starts_with('v') => Some(v.to_string()),
                _ => None,
            }
        })
    };
    Ok(PinnedVersions {
        kubernetes: find("k8s.io/kubernetes").ok_or(AssetError::GoMod("k8s.io/kubernetes"))?,
        etcd: find("go.etcd.io/etcd/server/v3")
            .ok_or(AssetError::GoMod("go.etcd.io/etcd/server/v3"))?,
    })
}

/// The versions this harness runs.
pub fn pinned_versions() -> PinnedVersions {
    parse_go_mod(GO_MOD).expect("tests/k8s-bins/go.mod pins k8s.io/kubernetes and etcd")
}

/// The wrapper Go module directory (tests/k8s-bins).
pub fn wrapper_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s-bins")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/vworkspace/k8s-bins`.
pub fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/tmp")))
                .join(".cache")
        });
    base.join("vworkspace").join("k8s-bins")
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

fn complete(dir: &Path) -> bool {
    ["kube-apiserver", "etcd", "kubectl"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// Resolves the binaries, building them into the cache when needed (minutes, once).
///
/// The result is memoised for the process.
pub fn resolve() -> Result<Assets, AssetError> {
    static RESOLVED: OnceLock<Assets> = OnceLock::new();
    if let Some(a) = RESOLVED.get() {
        return Ok(a.clone());
    }
    let a = resolve_uncached()?;
    Ok(RESOLVED.get_or_init(|| a).clone())
}

fn resolve_uncached() -> Result<Assets, AssetError> {
    let apiserver = env_path("TEST_ASSET_KUBE_APISERVER")?;
    let etcd = env_path("TEST_ASSET_ETCD")?;
    let kubectl = env_path("TEST_ASSET_KUBECTL")?;
    let from_dir = |dir: &Path| Assets {
        kube_apiserver: apiserver
            .clone()
            .unwrap_or_else(|| dir.join("kube-apiserver")),
        etcd: etcd.clone().unwrap_or_else(|| dir.join("etcd")),
        kubectl: kubectl
            .clone()
            .or_else(|| Some(dir.join("kubectl")).filter(|p| p.is_file())),
    };
    if let (Some(a), Some(e)) = (&apiserver, &etcd) {
        return Ok(Assets {
            kube_apiserver: a.clone(),
            etcd: e.clone(),
            kubectl,
        });
    }
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        let assets = from_dir(&dir);
        for (var, path) in [
            ("KUBEBUILDER_ASSETS", &assets.kube_apiserver),
            ("KUBEBUILDER_ASSETS", &assets.etcd),
        ] {
            if !path.is_file() {
                return Err(AssetError::Missing {
                    var,
                    path: path.clone(),
                });
            }
        }
        return Ok(assets);
    }
    let dir = build_cached()?;
    Ok(from_dir(&dir))
}

/// The Go version string without the `go` prefix, e.g. `1.26.8`.
fn go_version() -> Result<String, String> {
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
}

/// A `go` command with the environment every invocation here needs.
pub(crate) fn go_command() -> Command {
    let mut cmd = Command::new(std::env::var_os("GO").unwrap_or_else(|| "go".into()));
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    cmd
}

/// Returns the cache directory with all three binaries, building it if missing.
fn build_cached() -> Result<PathBuf, AssetError> {
    let versions = pinned_versions();
    let root = cache_root();
    let prefix = format!("k8s-{}-etcd-{}-go", versions.kubernetes, versions.etcd);
    let go = match go_version() {
        Ok(v) => v,
        Err(reason) => {
            // No usable Go: an earlier build by any Go version still serves.
            if let Some(dir) = fs::read_dir(&root).ok().and_then(|rd| {
                rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
                        && complete(p)
                })
            }) {
                return Ok(dir);
            }
            return Err(AssetError::NoGo {
                cache: root,
                reason,
            });
        }
    };
    let dir = root.join(format!("{prefix}{go}"));
    if complete(&dir) {
        return Ok(dir);
    }
    fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    let lock_path = root.join(format!("{prefix}{go}.lock"));
    let lock =
        File::create(&lock_path).map_err(io_err(format!("creating {}", lock_path.display())))?;
    // SAFETY: flock on a valid open descriptor; released when `lock` is dropped.
    let locked = |flags| unsafe { libc::flock(lock.as_raw_fd(), flags) } == 0;
    if !locked(libc::LOCK_EX | libc::LOCK_NB) {
        eprintln!(
            "another test process is building the control-plane binaries; waiting for {} …",
            lock_path.display()
        );
        if !locked(libc::LOCK_EX) {
            return Err(AssetError::Io {
                context: format!("locking {}", lock_path.display()),
                source: io::Error::last_os_error(),
            });
        }
    }
    if complete(&dir) {
        return Ok(dir); // another process built it while we waited
    }
    let tmp = root.join(format!("{prefix}{go}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    build_into(&tmp, &versions)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err(format!("renaming {} into place", tmp.display())))?;
    eprintln!("control-plane binaries cached in {}", dir.display());
    drop(lock);
    Ok(dir)
}

/// Runs the three `go build`s of the wrapper module into `out`.
fn build_into(out: &Path, v: &PinnedVersions) -> Result<(), AssetError> {
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
    let targets = [
        (
            "kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-apiserver",
            true,
        ),
        ("kubectl", "k8s.io/kubernetes/cmd/kubectl", true),
        ("etcd", "go.etcd.io/etcd/server/v3", false),
    ];
    for (name, package, versioned) in targets {
        let source = if versioned {
            format!("k8s.io/kubernetes {}", v.kubernetes)
        } else {
            format!("go.etcd.io/etcd/server/v3 {}", v.etcd)
        };
        eprintln!("building {name} from {source} (first run, several minutes)…");
        let started = std::time::Instant::now();
        let mut cmd = go_command();
        cmd.current_dir(wrapper_module_dir())
            .args(["build", "-v", "-trimpath"]);
        if versioned {
            cmd.arg("-ldflags").arg(&ldflags);
        }
        cmd.arg("-o")
            .arg(out.join(name))
            .arg(package)
            // Streamed so a developer sees progress; goes around libtest's capture.
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let status = cmd
            .status()
            .map_err(io_err(format!("running `go build` for {name}")))?;
        if !status.success() {
            return Err(AssetError::Build {
                what: name.to_string(),
                status: status.to_string(),
            });
        }
        eprintln!("built {name} in {:.0?}", started.elapsed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_mod_pins_versions() {
        let v = parse_go_mod(GO_MOD).unwrap();
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
    }

    #[test]
    fn go_mod_without_pins_is_an_error() {
        let err = parse_go_mod("module x\n\ngo 1.26\n").unwrap_err();
        assert!(err.to_string().contains("k8s.io/kubernetes"), "{err}");
    }

    #[test]
    fn fix_message_names_both_ways() {
        assert!(HOW_TO_FIX.contains("KUBEBUILDER_ASSETS"));
        assert!(HOW_TO_FIX.contains("Go >= 1.26"));
    }
}
