//! hub-sim and the agent as separate processes, built from this workspace.
//!
//! Children are spawned through the harness's [`crate::process`] layer, so they
//! die with the test or demo process even when it is killed.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::admin::AdminClient;

/// Why a process could not be built, started or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// `cargo build` of the binaries failed.
    #[error(
        "building vworkspace-agent and hub-sim failed: {0} (run `cargo build -p vworkspace-agent -p vworkspace-hub-sim --bins` to see why, or set VWS_AGENT_BIN and VWS_HUB_SIM_BIN)"
    )]
    Build(String),
    /// A process did not start.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which process.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A process did not get ready in time.
    #[error("{what} did not get ready within {timeout:?}; last lines of {log}:\n{tail}")]
    NotReady {
        /// Which process.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// A CLI call failed.
    #[error("{what} failed ({status}): {stderr}")]
    Cli {
        /// The command.
        what: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// File system trouble in a state or log directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProcError + '_ {
    move |source| ProcError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Paths of the two binaries under test.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `vworkspace-agent`.
    pub agent: PathBuf,
    /// `hub-sim`.
    pub hub_sim: PathBuf,
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds (or finds up to date) `vworkspace-agent` and `hub-sim` with cargo.
///
/// `VWS_AGENT_BIN` and `VWS_HUB_SIM_BIN` skip the build; so do dev binaries
/// next to the running test binary that are newer than their sources.
/// Otherwise `$CARGO`
/// (set by `cargo run` and `cargo test`, else `cargo`) builds both packages'
/// binaries in the given profile; cargo's progress goes to stderr and the
/// executables are read from its JSON artifact messages, so any target dir
/// layout works. Cached per process.
pub fn binaries(release: bool) -> Result<Binaries, ProcError> {
    static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(release).map_err(|e| e.to_string()))
        .clone()
        .map_err(ProcError::Build)
}

fn build(release: bool) -> Result<Binaries, ProcError> {
    if let (Ok(agent), Ok(hub)) = (
        std::env::var("VWS_AGENT_BIN"),
        std::env::var("VWS_HUB_SIM_BIN"),
    ) {
        return Ok(Binaries {
            agent: agent.into(),
            hub_sim: hub.into(),
        });
    }
    if !release && let Some(found) = fresh_next_to_test_binary() {
        eprintln!(
            "==> using {} and {} (newer than their sources)",
            found.agent.display(),
            found.hub_sim.display()
        );
        return Ok(found);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "==> building vworkspace-agent and hub-sim ({} profile; fast when up to date)",
        if release { "release" } else { "dev" }
    );
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "vworkspace-agent",
        "-p",
        "vworkspace-hub-sim",
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| ProcError::Build(format!("running {}: {e}", cargo.to_string_lossy())))?;
    let (mut agent, mut hub_sim) = (None, None);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else {
                continue;
            };
            match msg["target"]["name"].as_str() {
                Some("vworkspace-agent") => agent = Some(PathBuf::from(exe)),
                Some("hub-sim") => hub_sim = Some(PathBuf::from(exe)),
                _ => {}
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| ProcError::Build(format!("waiting for cargo: {e}")))?;
    if !status.success() {
        return Err(ProcError::Build(format!(
            "cargo build exited with {status}"
        )));
    }
    match (agent, hub_sim) {
        (Some(agent), Some(hub_sim)) => Ok(Binaries { agent, hub_sim }),
        _ => Err(ProcError::Build(
            "cargo reported no vworkspace-agent or hub-sim executable".into(),
        )),
    }
}

/// The binaries `cargo test --workspace` just built next to this test
/// binary (`target/debug/deps/..` → `target/debug/`), if they are newer than
/// every source they are built from. Building them again with another
/// package selection would unify features differently and rebuild the
/// dependency tree; this is the common case under `tests/run`.
fn fresh_next_to_test_binary() -> Option<Binaries> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let dir = deps.parent()?;
    let found = Binaries {
        agent: dir.join("vworkspace-agent"),
        hub_sim: dir.join("hub-sim"),
    };
    let built = [&found.agent, &found.hub_sim]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()?;
    let root = workspace_root();
    let mut newest = std::fs::metadata(root.join("Cargo.lock"))
        .and_then(|m| m.modified())
        .ok()?;
    for krate in ["agent", "hub-sim", "protocol", "crds"] {
        newest = newest.max(newest_mtime(&root.join(krate).join("Cargo.toml"))?);
        newest = newest.max(newest_mtime(&root.join(krate).join("src"))?);
    }
    (built >= newest).then_some(found)
}

/// The newest modification time of a file or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()? {
            newest = newest.max(newest_mtime(&entry.ok()?.path())?);
        }
    }
    Some(newest)
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16, ProcError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| ProcError::Spawn {
        what: "a port probe",
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| ProcError::Spawn {
            what: "a port probe",
            source,
        })
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), ProcError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let g = f.try_clone().map_err(io_err(path))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

fn tail(path: &Path) -> String {
    crate::process::tail(path, 25)
}

/// Polls `ready` every 50 ms until true or `timeout`; fails early if `child` exits.
async fn wait_ready(
    what: &'static str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), ProcError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || tokio::time::Instant::now() >= deadline {
            return Err(ProcError::NotReady {
                what,
                timeout,
                log: log.display().to_string(),
                tail: tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `hub-sim serve` process on loopback with its own state directory.
///
/// The TLS port is fixed at the first start and reused by [`HubSim::restart`],
/// because enrolled agents keep dialing the URL enrollment gave them.
#[derive(Debug)]
pub struct HubSim {
    bin: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    tls_addr: SocketAddr,
    extra_args: Vec<String>,
    admin: AdminClient,
    child: Option<Child>,
}

impl HubSim {
    /// Starts `hub-sim serve` on `127.0.0.1:<free port>` with `state_dir`; logs append to `log`.
    ///
    /// `extra_args` are more `serve` flags (e.g. `--ping-interval 2s`).
    pub async fn start(
        bin: &Path,
        state_dir: &Path,
        log: &Path,
        extra_args: &[&str],
    ) -> Result<Self, ProcError> {
        let tls_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (child, admin) = Self::spawn(bin, state_dir, log, tls_addr, extra_args).await?;
        Ok(Self {
            bin: bin.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            log: log.to_path_buf(),
            tls_addr,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            admin,
            child: Some(child),
        })
    }

    async fn spawn(
        bin: &Path,
        state_dir: &Path,
        log: &Path,
        tls_addr: SocketAddr,
        extra_args: &[impl AsRef<str>],
    ) -> Result<(Child, AdminClient), ProcError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let addr_file = state_dir.join("admin-addr");
        let _ = std::fs::remove_file(&addr_file);
        let make = || -> Result<Command, ProcError> {
            let (out, err) = log_file(log)?;
            let mut cmd = Command::new(bin);
            cmd.arg("serve")
                .arg("--listen")
                .arg(tls_addr.to_string())
                .arg("--admin-listen")
                .arg("127.0.0.1:0")
                .args(extra_args.iter().map(AsRef::as_ref))
                .env("HUB_SIM_STATE_DIR", state_dir)
                .env("HUB_SIM_LOG", "info")
                .env_remove("HUB_SIM_ADMIN")
                .env_remove("HUB_SIM_ADMIN_TOKEN")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            Ok(cmd)
        };
        // The TLS port may still be held for a moment after a kill: retry the start.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut child = crate::process::spawn(make()?).map_err(|source| ProcError::Spawn {
                what: "hub-sim",
                source,
            })?;
            let ready = wait_ready("hub-sim", &mut child, log, Duration::from_secs(30), || {
                addr_file.exists()
            })
            .await;
            match ready {
                Ok(()) => {
                    let addr_text =
                        std::fs::read_to_string(&addr_file).map_err(io_err(&addr_file))?;
                    let token_file = state_dir.join("admin-token");
                    let token =
                        std::fs::read_to_string(&token_file).map_err(io_err(&token_file))?;
                    let addr = addr_text.trim().parse().map_err(|_| ProcError::Io {
                        path: addr_file.display().to_string(),
                        source: std::io::Error::other("not a socket address"),
                    })?;
                    return Ok((child, AdminClient::new(addr, token.trim())));
                }
                Err(_) if attempt < 20 => {
                    crate::process::stop(&mut child, Duration::from_secs(2));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    crate::process::stop(&mut child, Duration::from_secs(2));
                    return Err(e);
                }
            }
        }
    }

    /// The admin API client (valid until the next restart).
    pub fn admin(&self) -> &AdminClient {
        &self.admin
    }

    /// `127.0.0.1:<port>` of the TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The log file (stdout and stderr of every incarnation).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (no Goodbye, nothing flushed beyond what SQLite committed).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child's process group.
            unsafe {
                libc::killpg(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM: agents get Goodbye; SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            crate::process::stop(&mut c, grace);
        }
    }

    /// Starts it again on the same state directory and TLS port (after a kill or stop).
    pub async fn restart(&mut self) -> Result<(), ProcError> {
        self.kill();
        let (child, admin) = Self::spawn(
            &self.bin,
            &self.state_dir,
            &self.log,
            self.tls_addr,
            &self.extra_args,
        )
        .await?;
        self.child = Some(child);
        self.admin = admin;
        Ok(())
    }

    /// Runs a `hub-sim` CLI subcommand against this hub's state dir; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, ProcError> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("HUB_SIM_STATE_DIR", &self.state_dir)
            .env_remove("HUB_SIM_ADMIN")
            .env_remove("HUB_SIM_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ProcError::Spawn {
                what: "the hub-sim CLI",
                source,
            })?;
        if !out.status.success() {
            return Err(ProcError::Cli {
                what: format!("hub-sim {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for HubSim {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Where and how the agent process runs.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The agent binary.
    pub bin: PathBuf,
    /// Admin kubeconfig of the control plane.
    pub kubeconfig: PathBuf,
    /// Agent namespace (token and credentials Secrets, Lease).
    pub namespace: String,
    /// Name of the Cluster object.
    pub cluster_object: String,
    /// Log file (JSON lines of every incarnation, appended).
    pub log: PathBuf,
    /// Reconnect backoff cap (short in tests).
    pub backoff_max: &'static str,
    /// Extra `run` flags.
    pub extra_args: Vec<String>,
}

/// A `vworkspace-agent run` process.
#[derive(Debug)]
pub struct AgentProc {
    settings: AgentSettings,
    admin_addr: SocketAddr,
    child: Option<Child>,
}

impl AgentSettings {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env_remove("VWS_AGENT_JOIN_TOKEN")
            .stdin(Stdio::null());
        cmd
    }

    /// `vworkspace-agent join` with the token passed through the environment
    /// (never argv, where `ps` shows it); returns its stdout.
    pub fn join(&self, token: &str) -> Result<String, ProcError> {
        let out = self
            .command()
            .args([
                "join",
                "--namespace",
                &self.namespace,
                "--cluster-object",
                &self.cluster_object,
            ])
            .env("VWS_AGENT_JOIN_TOKEN", token)
            .output()
            .map_err(|source| ProcError::Spawn {
                what: "vworkspace-agent join",
                source,
            })?;
        if !out.status.success() {
            return Err(ProcError::Cli {
                what: "vworkspace-agent join".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `vworkspace-agent status`; returns its stdout.
    pub fn status(&self) -> Result<String, ProcError> {
        let out = self
            .command()
            .args([
                "status",
                "--namespace",
                &self.namespace,
                "--cluster-object",
                &self.cluster_object,
            ])
            .output()
            .map_err(|source| ProcError::Spawn {
                what: "vworkspace-agent status",
                source,
            })?;
        if !out.status.success() {
            return Err(ProcError::Cli {
                what: "vworkspace-agent status".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl AgentProc {
    /// Starts `vworkspace-agent run`; returns once its admin server answers.
    pub async fn start(settings: AgentSettings) -> Result<Self, ProcError> {
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Self::spawn(&settings, admin_addr).await?;
        Ok(Self {
            settings,
            admin_addr,
            child: Some(child),
        })
    }

    async fn spawn(s: &AgentSettings, admin_addr: SocketAddr) -> Result<Child, ProcError> {
        let (out, err) = log_file(&s.log)?;
        let mut cmd = s.command();
        cmd.args([
            "--log-format",
            "json",
            "--log-level",
            "info,kube=warn,hyper=warn,rustls=warn,tungstenite=warn",
            "run",
            "--namespace",
            &s.namespace,
            "--cluster-object",
            &s.cluster_object,
            "--admin-addr",
            &admin_addr.to_string(),
            "--backoff-min",
            "200ms",
            "--backoff-max",
            s.backoff_max,
            "--ready-grace",
            "1s",
            "--lease-duration",
            "4s",
            "--lease-renew",
            "1s",
            // One identity across restarts: a restarted agent takes its own Lease back at once.
            "--pod-name",
            "vworkspace-agent-e2e",
        ])
        .args(&s.extra_args)
        .stdout(out)
        .stderr(err);
        let mut child = crate::process::spawn(cmd).map_err(|source| ProcError::Spawn {
            what: "vworkspace-agent",
            source,
        })?;
        wait_ready(
            "vworkspace-agent",
            &mut child,
            &s.log,
            Duration::from_secs(30),
            || std::net::TcpStream::connect(admin_addr).is_ok(),
        )
        .await?;
        Ok(child)
    }

    /// The admin server (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no Goodbye, the Lease is left held.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child's process group.
            unsafe {
                libc::killpg(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// SIGTERM (Goodbye, Lease vacated); SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            crate::process::stop(&mut c, grace);
        }
    }

    /// Starts it again with the same settings (after a kill or stop).
    pub async fn restart(&mut self) -> Result<(), ProcError> {
        self.kill();
        self.admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        self.child = Some(Self::spawn(&self.settings, self.admin_addr).await?);
        Ok(())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
