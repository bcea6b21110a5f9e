//! The real upstream programs beside the control plane: kube-controller-manager,
//! Flux source- and helm-controller, and the test charts served over HTTP and
//! OCI; and, started apart by the tests that back up ([`velero::shared`]), the
//! Velero server with an S3 store. Built from Go modules like the control
//! plane ([`crate::assets`]).
//!
//! ```no_run
//! # async fn t() {
//! let up = vworkspace_e2e::upstream::shared(); // once per test binary
//! let url = up.charts.http_url();               // a Helm repository with tests/charts
//! # }
//! ```

pub mod charts;
pub mod controller_manager;
pub mod flux;
pub mod velero;

use std::sync::OnceLock;

pub use charts::Charts;
pub use controller_manager::ControllerManager;
pub use flux::Flux;

use crate::daemon::DaemonError;

/// Why an upstream program could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error(transparent)]
    Assets(#[from] crate::assets::AssetError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Crds(#[from] crate::crds::CrdError),
    #[error(transparent)]
    ControlPlane(#[from] crate::Error),
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed:\n{output}")]
    Helm { what: String, output: String },
    #[error("a start task panicked: {0}")]
    Panicked(String),
    /// The shared instance failed to start earlier in this process.
    #[error("shared upstream controllers failed to start: {0}")]
    Shared(String),
}

/// Everything real that runs beside the shared control plane.
#[derive(Debug)]
pub struct Upstream {
    /// Garbage collection, namespace deletion, Jobs.
    pub controller_manager: ControllerManager,
    /// source-controller + helm-controller.
    pub flux: Flux,
    /// The test charts over HTTP and OCI.
    pub charts: Charts,
    dir: tempfile::TempDir,
}

impl Upstream {
    /// Starts everything against `cp`: every upstream CRD first, then the
    /// controller manager (so its garbage collector knows every kind at once),
    /// Flux, and the chart servers.
    pub async fn start(cp: &crate::ControlPlane) -> Result<Self, UpstreamError> {
        let dir = tempfile::Builder::new()
            .prefix("vws-upstream-")
            .tempdir()
            .map_err(|source| UpstreamError::Io {
                context: "creating the upstream temp dir".into(),
                source,
            })?;
        let client = cp.client()?;
        crate::crds::install_upstream_crds(&client).await?;
        crate::crds::install_flux_controller_crds(&client).await?;
        let flux_bins = tokio::task::spawn_blocking(crate::assets::resolve_flux);
        let flux_bins = flux_bins
            .await
            .map_err(|e| UpstreamError::Panicked(e.to_string()))??;
        let controller_manager = ControllerManager::start(cp, dir.path()).await?;
        let flux = Flux::start(cp, dir.path()).await?;
        let charts = Charts::start(&flux_bins, dir.path()).await?;
        Ok(Self {
            controller_manager,
            flux,
            charts,
            dir,
        })
    }

    /// Logs, packages and storage of the upstream programs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The last lines of every upstream log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        [
            self.controller_manager.daemon(),
            self.flux.source_controller(),
            self.flux.helm_controller(),
            self.charts.registry(),
        ]
        .iter()
        .map(|d| {
            format!(
                "--- {}:\n{}",
                d.log().display(),
                crate::process::tail(d.log(), lines)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

/// The upstream programs beside [`crate::shared`], started on first use in
/// this test binary and stopped when it exits. Panics with the start error
/// (including how to provide the binaries) if they cannot start.
pub fn shared() -> &'static Upstream {
    try_shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`shared`], returning the error instead of panicking.
pub fn try_shared() -> Result<&'static Upstream, UpstreamError> {
    static SHARED: OnceLock<Result<Upstream, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let cp = crate::try_shared().map_err(|e| e.to_string())?;
            crate::on_own_runtime("vws-shared-upstream", move || async move {
                let up = Upstream::start(cp).await.map_err(|e| e.to_string())?;
                // Statics are never dropped: the exit hook removes the directory.
                crate::process::register(Vec::new(), vec![up.dir().to_path_buf()]);
                Ok(up)
            })
        })
        .as_ref()
        .map_err(|e| UpstreamError::Shared(e.clone()))
}
