//! kube-controller-manager with the controllers a cluster without a kubelet
//! can run: garbage collection (owner references cascade), namespace deletion
//! (a deleted namespace empties and goes), Jobs and TTL-after-finished.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::UpstreamError;
use crate::ControlPlane;
use crate::daemon::Daemon;

/// The controllers started; the rest need nodes or cloud providers.
pub const CONTROLLERS: &str = "garbage-collector-controller,namespace-controller,job-controller,\
ttl-after-finished-controller";

/// A running kube-controller-manager.
#[derive(Debug)]
pub struct ControllerManager {
    daemon: Daemon,
}

impl ControllerManager {
    /// Starts it against `cp` (admin kubeconfig, no serving port at all).
    ///
    /// Start it after the CRDs are installed: the garbage collector sees CRDs
    /// added later only at its next discovery resync (30 s).
    pub async fn start(cp: &ControlPlane, log_dir: &Path) -> Result<Self, UpstreamError> {
        let bin = tokio::task::spawn_blocking(crate::assets::resolve_controller_manager)
            .await
            .map_err(|e| UpstreamError::Panicked(e.to_string()))??;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--leader-elect=false")
            // No listener: the test API server has no request-header CA for it.
            .arg("--secure-port=0")
            .arg("--concurrent-gc-syncs=5")
            .arg("--v=2");
        let daemon = Daemon::spawn("kube-controller-manager", cmd, log_dir)?;
        // Without a port the log is the only readiness signal: the garbage
        // collector logs this once its informers have synced.
        daemon
            .wait_log("resource monitors have synced", Duration::from_secs(90))
            .await?;
        Ok(Self { daemon })
    }

    /// The process.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }
}
