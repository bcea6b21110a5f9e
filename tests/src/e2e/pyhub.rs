//! The Python hub library's example hub (`python -m vworkspace_hub.example`)
//! as a process, a throwaway PostgreSQL server for it, and a switchable TCP
//! forwarder that stands in for a load balancer in front of several hubs.
//!
//! The example hub answers the same admin routes hub-sim does for tokens,
//! apply, delete, clusters, intents and objects, so [`super::admin`] and the
//! helpers in [`super`] drive it unchanged.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::admin::AdminClient;
use super::procs::{ProcError, free_port, workspace_root};

/// The venv interpreter with `vworkspace-hub` installed (`tests/run` makes it):
/// `VWS_PYTHON`, else `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    std::env::var_os("VWS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProcError + '_ {
    move |source| ProcError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One example-hub process.
#[derive(Debug)]
pub struct PyHub {
    state_dir: PathBuf,
    log: PathBuf,
    port: u16,
    admin: AdminClient,
    child: Option<Child>,
}

impl PyHub {
    /// Starts `serve` on `127.0.0.1:port` with its state in `state_dir`
    /// (SQLite there, or the PostgreSQL of `postgres`); waits for the admin API.
    pub async fn start(
        state_dir: &Path,
        log: &Path,
        port: u16,
        postgres: Option<&str>,
        extra_args: &[&str],
    ) -> Result<Self, ProcError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let addr_file = state_dir.join("admin-addr");
        let _ = std::fs::remove_file(&addr_file);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(log))?;
        let err = out.try_clone().map_err(io_err(log))?;
        let mut cmd = Command::new(python());
        cmd.args(["-m", "vworkspace_hub.example", "--state-dir"])
            .arg(state_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        if let Some(conninfo) = postgres {
            cmd.arg("--postgres").arg(conninfo);
        }
        cmd.arg("serve")
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = crate::process::spawn(cmd).map_err(|source| ProcError::Spawn {
            what: "the Python example hub",
            source,
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !addr_file.exists() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || tokio::time::Instant::now() >= deadline {
                crate::process::stop(&mut child, Duration::from_secs(2));
                return Err(ProcError::NotReady {
                    what: "the Python example hub",
                    timeout: Duration::from_secs(60),
                    log: log.display().to_string(),
                    tail: crate::process::tail(log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr: SocketAddr = std::fs::read_to_string(&addr_file)
            .map_err(io_err(&addr_file))?
            .trim()
            .parse()
            .map_err(|_| ProcError::Io {
                path: addr_file.display().to_string(),
                source: std::io::Error::other("not a socket address"),
            })?;
        let token_file = state_dir.join("admin-token");
        let token = std::fs::read_to_string(&token_file).map_err(io_err(&token_file))?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            log: log.to_path_buf(),
            port,
            admin: AdminClient::new(addr, token.trim()),
            child: Some(child),
        })
    }

    /// The admin API client.
    pub fn admin(&self) -> &AdminClient {
        &self.admin
    }

    /// The hub's log.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The hub's TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the hub keeps its state.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// SIGTERM (the hub says goodbye to every tunnel), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            crate::process::stop(&mut c, grace);
        }
    }
}

impl Drop for PyHub {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A PostgreSQL server in a temporary directory (`python -m vworkspace_hub.pgtest`).
#[derive(Debug)]
pub struct PgServer {
    conninfo: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts the server; it stops when this value drops (its stdin closes).
    pub fn start() -> Result<Self, ProcError> {
        let dir = tempfile::Builder::new()
            .prefix("vws-pg-")
            .tempdir()
            .map_err(|source| ProcError::Io {
                path: "a temporary directory".into(),
                source,
            })?;
        let mut cmd = Command::new(python());
        cmd.args(["-m", "vworkspace_hub.pgtest"])
            .arg(dir.path().join("pg"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = crate::process::spawn(cmd).map_err(|source| ProcError::Spawn {
            what: "PostgreSQL (vworkspace_hub.pgtest)",
            source,
        })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if !line.contains("port=") {
            crate::process::stop(&mut child, Duration::from_secs(2));
            return Err(ProcError::Cli {
                what: "python -m vworkspace_hub.pgtest".into(),
                status: "no conninfo printed".into(),
                stderr: "see the test output above".into(),
            });
        }
        Ok(Self {
            conninfo: line.trim().to_owned(),
            child: Some(child),
            _dir: dir,
        })
    }

    /// The libpq connection string.
    pub fn conninfo(&self) -> &str {
        &self.conninfo
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing stdin asks pgtest to stop PostgreSQL cleanly.
            drop(c.stdin.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            crate::process::stop(&mut c, Duration::from_secs(1));
        }
    }
}

/// A TCP forwarder on loopback whose target can be switched: a load balancer
/// in front of several hub processes. Switching drops the live connections.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    target: Arc<AtomicU16>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Forwarder {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Result<Self, ProcError> {
        let port = free_port()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|source| ProcError::Spawn {
                what: "the TCP forwarder",
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProcError::Spawn {
            what: "the TCP forwarder",
            source,
        })?;
        let target = Arc::new(AtomicU16::new(target));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, c) = (target.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let port = t.load(Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut list = c.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|h| !h.is_finished());
                list.push(task);
            }
        });
        Ok(Self {
            addr,
            target,
            conns,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// New connections go to `127.0.0.1:port`; the live ones are cut.
    pub fn switch(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
        self.switch(0);
    }
}
