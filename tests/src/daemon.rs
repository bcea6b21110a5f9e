//! Upstream processes that run beside the control plane (controller manager,
//! Flux controllers, the OCI registry): one log file each, killed with the
//! test process, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::process;

/// Why a daemon could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The process exited or never answered; carries the tail of its log.
    #[error("{name} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        name: String,
        reason: String,
        log: String,
        tail: String,
    },
}

/// One running upstream process.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Mutex<Option<Child>>,
    registration: u64,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr into `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self, DaemonError> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|source| DaemonError::Io {
            context: format!("creating {}", log.display()),
            source,
        })?;
        let err = file.try_clone().map_err(|source| DaemonError::Io {
            context: "cloning a log handle".into(),
            source,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = process::spawn(cmd).map_err(|source| DaemonError::Io {
            context: format!("spawning {name}"),
            source,
        })?;
        let registration = process::register(vec![child.id() as i32], Vec::new());
        Ok(Self {
            name: name.to_string(),
            child: Mutex::new(Some(child)),
            registration,
            log,
        })
    }

    /// The process's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }

    /// `Some(reason)` when the process has exited.
    pub fn exited(&self) -> Option<String> {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut().map(Child::try_wait) {
            None => Some("stopped".into()),
            Some(Ok(Some(status))) => Some(format!("process exited: {status}")),
            _ => None,
        }
    }

    /// An error carrying the last lines of the log.
    pub fn not_ready(&self, reason: impl Into<String>) -> DaemonError {
        DaemonError::NotReady {
            name: self.name.clone(),
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: process::tail(&self.log, 40),
        }
    }

    /// Waits until `GET http://127.0.0.1:<port><path>` answers 200.
    pub async fn wait_http_ok(
        &self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = self.exited() {
                return Err(self.not_ready(why));
            }
            if http_get(port, path)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(format!(
                    "GET 127.0.0.1:{port}{path} not 200 within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the log contains `needle` (for processes without a probe endpoint).
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = self.exited() {
                return Err(self.not_ready(why));
            }
            if std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(needle)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(format!("no {needle:?} in the log within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            process::stop(&mut child, grace);
        }
        process::unregister(self.registration);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `GET` over plain HTTP/1.0 on loopback: status code and body, or `None`.
///
/// Only for readiness probes of local processes (etcd, controllers, registry).
pub(crate) async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let resp = tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()?
        .ok()?;
    let status = resp
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A free port on 127.0.0.1 (the listener is closed again; tiny race accepted,
/// callers retry the start).
pub(crate) fn free_port() -> Result<u16, DaemonError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| DaemonError::Io {
        context: "binding 127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| DaemonError::Io {
            context: "local_addr".into(),
            source,
        })
}
