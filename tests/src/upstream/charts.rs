//! The test charts (`tests/charts/<name>/<version>/`, source only), packaged
//! by the real `helm` at start and served two ways: an HTTP Helm repository
//! (an `index.yaml` from `helm repo index`) and an OCI registry (`helm push`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::UpstreamError;
use crate::assets::FluxSet;
use crate::daemon::{Daemon, free_port};
use crate::helm::HelmCommand;

/// Where the chart sources live.
pub fn charts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts")
}

/// One chart version found under [`charts_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartSource {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
}

/// Every `<name>/<version>/Chart.yaml` under `root`, sorted.
pub fn chart_sources(root: &Path) -> Result<Vec<ChartSource>, UpstreamError> {
    let read = |p: &Path| {
        std::fs::read_dir(p).map_err(|source| UpstreamError::Io {
            context: format!("reading {}", p.display()),
            source,
        })
    };
    let mut out = Vec::new();
    for name in read(root)?.filter_map(Result::ok) {
        if !name.path().is_dir() {
            continue;
        }
        for version in read(&name.path())?.filter_map(Result::ok) {
            let dir = version.path();
            if dir.join("Chart.yaml").is_file() {
                out.push(ChartSource {
                    name: name.file_name().to_string_lossy().into_owned(),
                    version: version.file_name().to_string_lossy().into_owned(),
                    dir,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

/// The packaged charts, served over HTTP and OCI.
#[derive(Debug)]
pub struct Charts {
    http_url: String,
    oci_host: String,
    charts: Vec<ChartSource>,
    registry: Daemon,
}

impl Charts {
    /// Packages every chart with `helm`, starts the HTTP repository and the
    /// registry, and pushes every package to it. `dir` holds packages, the
    /// registry's storage and the logs.
    pub async fn start(flux: &FluxSet, dir: &Path) -> Result<Self, UpstreamError> {
        let registry_bin = tokio::task::spawn_blocking(crate::assets::resolve_registry)
            .await
            .map_err(|e| UpstreamError::Panicked(e.to_string()))??
            .registry;
        let charts = chart_sources(&charts_dir())?;
        let repo = dir.join("helm-repository");
        mkdir(&repo)?;
        for c in &charts {
            helm(flux, dir)
                .arg("package")
                .arg(&c.dir)
                .arg("--destination")
                .arg(&repo)
                .run(&format!("helm package {}", c.dir.display()))?;
        }

        // The HTTP repository: the URL goes into index.yaml, so bind first.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| UpstreamError::Io {
                context: "binding the chart repository's port".into(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| UpstreamError::Io {
            context: "local_addr".into(),
            source,
        })?;
        let http_url = format!("http://{addr}");
        helm(flux, dir)
            .arg("repo")
            .arg("index")
            .arg(&repo)
            .arg("--url")
            .arg(&http_url)
            .run("helm repo index")?;
        serve_dir(listener, addr, repo.clone())?;

        // The OCI registry (CNCF distribution), plain HTTP on loopback.
        let port = free_port()?;
        let storage = dir.join("registry-storage");
        mkdir(&storage)?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .map_err(|source| UpstreamError::Io {
            context: format!("writing {}", config.display()),
            source,
        })?;
        let mut cmd = Command::new(registry_bin);
        cmd.arg("serve").arg(&config);
        let registry = Daemon::spawn("oci-registry", cmd, dir)?;
        registry
            .wait_http_ok(port, "/v2/", Duration::from_secs(30))
            .await?;
        let oci_host = format!("127.0.0.1:{port}");
        for c in &charts {
            let package = repo.join(format!("{}-{}.tgz", c.name, c.version));
            helm(flux, dir)
                .arg("push")
                .arg(&package)
                .arg(format!("oci://{oci_host}/charts"))
                .arg("--plain-http")
                .run(&format!("helm push {}", package.display()))?;
        }
        Ok(Self {
            http_url,
            oci_host,
            charts,
            registry,
        })
    }

    /// The HTTP Helm repository, `http://127.0.0.1:<port>` (for `sourceType: helm`).
    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// The OCI repository base, `oci://127.0.0.1:<port>/charts` (for `sourceType: oci`).
    pub fn oci_url(&self) -> String {
        format!("oci://{}/charts", self.oci_host)
    }

    /// The chart versions served.
    pub fn charts(&self) -> &[ChartSource] {
        &self.charts
    }

    /// The registry process.
    pub fn registry(&self) -> &Daemon {
        &self.registry
    }
}

fn mkdir(p: &Path) -> Result<(), UpstreamError> {
    std::fs::create_dir_all(p).map_err(|source| UpstreamError::Io {
        context: format!("creating {}", p.display()),
        source,
    })
}

/// A `helm` command whose caches and registry login stay in `dir`.
fn helm(flux: &FluxSet, dir: &Path) -> HelmCommand {
    HelmCommand::new(&flux.helm, &dir.join("helm"))
}

/// Serves `root` read-only on `listener` from a thread of its own, for the
/// life of the process.
fn serve_dir(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    root: PathBuf,
) -> Result<(), UpstreamError> {
    listener
        .set_nonblocking(true)
        .map_err(|source| UpstreamError::Io {
            context: "setting the chart repository's socket non-blocking".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name(format!("vws-chart-repo-{}", addr.port()))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the chart repository");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let app =
                    axum::Router::new().fallback_service(tower_http::services::ServeDir::new(root));
                let _ = axum::serve(listener, app).await;
            });
        })
        .map_err(|source| UpstreamError::Io {
            context: "spawning the chart repository thread".into(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_has_two_versions_of_hello_and_the_failure_charts() {
        let found: Vec<(String, String)> = chart_sources(&charts_dir())
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.version))
            .collect();
        for want in [
            ("hello", "0.1.0"),
            ("hello", "0.2.0"),
            ("needs-value", "0.1.0"),
            ("never-ready", "0.1.0"),
        ] {
            assert!(
                found.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from {found:?}"
            );
        }
    }
}
