//! The real Flux source-controller and helm-controller, out of cluster with
//! the admin kubeconfig, every listener on 127.0.0.1 with a free port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::UpstreamError;
use crate::ControlPlane;
use crate::assets::FluxSet;
use crate::daemon::{Daemon, free_port};

/// How long each controller may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Both Flux controllers.
#[derive(Debug)]
pub struct Flux {
    source: Daemon,
    helm: Daemon,
    bins: FluxSet,
    storage_addr: String,
}

impl Flux {
    /// Installs the Flux CRDs (all of source-controller's first: it refuses to
    /// start without them) and starts both controllers, watching every namespace.
    ///
    /// `dir` holds the artifact storage and the logs.
    pub async fn start(cp: &ControlPlane, dir: &Path) -> Result<Self, UpstreamError> {
        let bins = tokio::task::spawn_blocking(crate::assets::resolve_flux)
            .await
            .map_err(|e| UpstreamError::Panicked(e.to_string()))??;
        let client = cp.client()?;
        crate::crds::install_flux_controller_crds(&client).await?;

        let storage = dir.join("source-controller-storage");
        std::fs::create_dir_all(&storage).map_err(|source| UpstreamError::Io {
            context: format!("creating {}", storage.display()),
            source,
        })?;
        let storage_addr = format!("127.0.0.1:{}", free_port()?);
        let (source_health, source_metrics) = (free_port()?, free_port()?);
        let mut cmd = controller(&bins.source_controller, cp, dir);
        cmd.arg(format!("--storage-path={}", storage.display()))
            .arg(format!("--storage-addr={storage_addr}"))
            // What goes into status.artifact.url; helm-controller downloads from it.
            .arg(format!("--storage-adv-addr={storage_addr}"))
            .arg(format!("--health-addr=127.0.0.1:{source_health}"))
            .arg(format!("--metrics-addr=127.0.0.1:{source_metrics}"));
        let source = Daemon::spawn("source-controller", cmd, dir)?;

        let (helm_health, helm_metrics) = (free_port()?, free_port()?);
        let mut cmd = controller(&bins.helm_controller, cp, dir);
        cmd.arg(format!("--health-addr=127.0.0.1:{helm_health}"))
            .arg(format!("--metrics-addr=127.0.0.1:{helm_metrics}"));
        let helm = Daemon::spawn("helm-controller", cmd, dir)?;

        source
            .wait_http_ok(source_health, "/readyz", READY_TIMEOUT)
            .await?;
        helm.wait_http_ok(helm_health, "/readyz", READY_TIMEOUT)
            .await?;
        Ok(Self {
            source,
            helm,
            bins,
            storage_addr,
        })
    }

    /// source-controller's process.
    pub fn source_controller(&self) -> &Daemon {
        &self.source
    }

    /// helm-controller's process.
    pub fn helm_controller(&self) -> &Daemon {
        &self.helm
    }

    /// The binaries in use (the `helm` CLI among them).
    pub fn bins(&self) -> &FluxSet {
        &self.bins
    }

    /// `127.0.0.1:<port>` of source-controller's artifact server.
    pub fn storage_addr(&self) -> &str {
        &self.storage_addr
    }
}

/// A controller command with the flags and environment both share.
fn controller(bin: &PathBuf, cp: &ControlPlane, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    // controller-runtime's loader reads KUBECONFIG.
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .arg("--enable-leader-election=false")
        .arg("--watch-all-namespaces=true")
        .arg("--log-level=info")
        // Helm's caches and registry config stay in the test's directory.
        .env("HOME", dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
    cmd
}
