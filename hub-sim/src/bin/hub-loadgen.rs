//! hub-loadgen: opens N concurrent mTLS tunnels to a running `hub-sim serve`
//! with heartbeat traffic, and measures the hub's RSS and CPU from /proc.
//!
//! Identities: by default each simulated cluster gets a join token from the
//! admin API and enrolls over `POST /v1/enroll` like a real agent (CSR,
//! single-use token). `--mint` skips enrollment and signs client certificates
//! directly with the CA read from the hub's state dir, which is faster for
//! very large N; the hub cannot tell the difference at the tunnel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use vworkspace_protocol::enrollment::{EnrollRequest, EnrollResponse};
use vworkspace_protocol::{
    self as proto, Envelope, Frame, Hello, Inventory, InventoryEntry, Limits, ObjectKind, ObjectRef,
};

/// The agent's reconnect policy, compiled from the agent's own source file so
/// the simulated agents back off exactly as the real one does.
#[path = "../../../agent/src/hub/backoff.rs"]
mod backoff;

/// Load generator for hub-sim tunnels.
#[derive(Parser, Debug)]
#[command(name = "hub-loadgen", version)]
struct Args {
    /// State dir of the running hub (admin address, admin token, CA).
    #[arg(long, env = "HUB_SIM_STATE_DIR", default_value = ".hub-sim")]
    state_dir: PathBuf,
    /// Number of tunnels.
    #[arg(long, default_value_t = 2000)]
    tunnels: usize,
    /// Sign client certificates with the state dir's CA instead of enrolling.
    #[arg(long)]
    mint: bool,
    /// Concurrent enrollments / connection attempts while ramping up.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Each tunnel sends one Status frame this often (seconds).
    #[arg(long, default_value_t = 20)]
    heartbeat_secs: u64,
    /// How long to hold all tunnels open while measuring (seconds).
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
    /// PID of the hub process to measure (default: none, no /proc numbers).
    #[arg(long)]
    hub_pid: Option<u32>,
    /// Prefix of the simulated cluster names.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// After the hold window, restart the hub (needs `--hub-pid`) this way
    /// and measure until every agent is back; repeat the flag for several
    /// storms in a row.
    #[arg(long, value_enum)]
    storm: Vec<Restart>,
    /// Longest a storm may take until every agent is back (seconds).
    #[arg(long, default_value_t = 300)]
    storm_timeout_secs: u64,
    /// First reconnect delay (the agent's `--backoff-min` default).
    #[arg(long, default_value = "1s")]
    backoff_min: hub_sim::cli::HumanDuration,
    /// Cap of the reconnect delay (the agent's `--backoff-max` default).
    #[arg(long, default_value = "5m")]
    backoff_max: hub_sim::cli::HumanDuration,
}

struct Identity {
    cluster: String,
    cert_pem: String,
    key_pem: String,
}

fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// (VmRSS KiB, utime + stime ticks) of a process.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn tls_config(
    ca_pem: &str,
    cert_pem: Option<(&str, &str)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match cert_pem {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
    })
}

async fn enroll_one(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    token: &str,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.to_owned(),
        csr_pem: csr.pem()?,
    })?;
    // The hub rate-limits enrollment per address; wait as told, like an agent.
    for _ in 0..600 {
        match enroll_request(addr, cfg.clone(), &body).await? {
            Enrolled::Done(bytes) => {
                let resp: EnrollResponse = serde_json::from_slice(&bytes)?;
                return Ok((resp.certificate_pem, key.serialize_pem()));
            }
            Enrolled::RetryAfter(wait) => tokio::time::sleep(wait).await,
        }
    }
    bail!("enrollment still rate limited after 600 attempts")
}

enum Enrolled {
    Done(Bytes),
    RetryAfter(Duration),
}

async fn enroll_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    body: &[u8],
) -> anyhow::Result<Enrolled> {
    let body = body.to_vec();
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post("/v1/enroll")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        return Ok(Enrolled::RetryAfter(Duration::from_secs(
            retry_after.unwrap_or(1).clamp(1, 60),
        )));
    }
    if !status.is_success() {
        bail!(
            "enrollment answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(Enrolled::Done(bytes))
}

/// Counters shared by every simulated agent.
struct Shared {
    /// Sessions past `Welcome` right now.
    connected: AtomicU64,
    /// Status frames sent.
    frames: AtomicU64,
    /// Sessions that ended while the run was not stopping.
    drops: AtomicU64,
    /// Restart number the agents are coming back from (0: none yet).
    epoch: AtomicU64,
    /// Agents back in the current epoch: Hello, Welcome, Inventory answered.
    back: AtomicU64,
    /// When the current epoch began (the signal to the hub).
    storm_start: std::sync::Mutex<Instant>,
    /// Per second of the current epoch: connection attempts.
    attempts: Vec<AtomicU64>,
    /// Per second of the current epoch: agents back.
    returns: Vec<AtomicU64>,
    /// The latest reason a session failed, for the report.
    last_error: std::sync::Mutex<Option<String>>,
}

/// Seconds of reconnect history kept per storm.
const STORM_SECONDS: usize = 600;

impl Shared {
    fn new() -> Self {
        Self {
            connected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            back: AtomicU64::new(0),
            storm_start: std::sync::Mutex::new(Instant::now()),
            attempts: (0..STORM_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            returns: (0..STORM_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            last_error: std::sync::Mutex::new(None),
        }
    }

    fn second(&self) -> usize {
        let start = *self.storm_start.lock().unwrap_or_else(|e| e.into_inner());
        (start.elapsed().as_secs() as usize).min(STORM_SECONDS - 1)
    }

    /// A new storm: counters start again from the signal to the hub.
    fn begin_storm(&self) {
        *self.storm_start.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        for c in self.attempts.iter().chain(&self.returns) {
            c.store(0, Ordering::Relaxed);
        }
        self.back.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// How one session ended.
enum Ended {
    /// The run is over.
    Stop,
    /// The hub said `Goodbye`, with its `retry_after` if it gave one.
    Goodbye(Option<Duration>),
    /// The connection failed or closed.
    Failed(anyhow::Error),
}

/// What a simulated agent needs besides its identity.
#[derive(Clone)]
struct AgentCfg {
    addr: SocketAddr,
    heartbeat: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// One simulated agent: sessions one after the other, spaced by the agent's
/// own reconnect policy (`agent/src/hub/backoff.rs`, compiled in as
/// [`backoff`]): `after_goodbye` after a `Goodbye{retry_after}`, otherwise
/// full jitter over attempts, the attempt count starting again after a
/// session that got its `Welcome` (as `agent/src/hub/tunnel` does).
async fn agent(
    cfg: AgentCfg,
    cluster: String,
    tls: Arc<rustls::ClientConfig>,
    ramp_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut ramp_permit = Some(ramp_permit);
    let mut attempt: u32 = 0;
    let mut back_epoch = 0u64;
    let mut session_no = 0u64;
    let mut stop = cfg.stop.clone();
    loop {
        cfg.shared.attempts[cfg.shared.second()].fetch_add(1, Ordering::Relaxed);
        session_no += 1;
        let mut was_up = false;
        let ended = session(
            &cfg,
            &cluster,
            tls.clone(),
            session_no,
            &mut ramp_permit,
            &mut back_epoch,
            &mut was_up,
        )
        .await;
        // A failed first attempt gives its ramp-up slot back too.
        ramp_permit.take();
        if was_up {
            attempt = 0;
        }
        let delay = match ended {
            Ended::Stop => return,
            Ended::Goodbye(Some(retry_after)) => {
                backoff::after_goodbye(retry_after, cfg.backoff_max)
            }
            Ended::Goodbye(None) => {
                attempt += 1;
                backoff::full_jitter(cfg.backoff_min, cfg.backoff_max, attempt)
            }
            Ended::Failed(e) => {
                *cfg.shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                attempt += 1;
                backoff::full_jitter(cfg.backoff_min, cfg.backoff_max, attempt)
            }
        };
        cfg.shared.drops.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection: TLS, `Hello`, `Welcome`, an `Inventory` whose status
/// digest differs from the hub's copy (so the hub compares, asks with
/// `ResyncRequest` and gets a `Status` back), then a `Status` every heartbeat.
#[allow(clippy::too_many_arguments)]
async fn session(
    cfg: &AgentCfg,
    cluster: &str,
    tls: Arc<rustls::ClientConfig>,
    session_no: u64,
    ramp_permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    back_epoch: &mut u64,
    was_up: &mut bool,
) -> Ended {
    let mut stop = cfg.stop.clone();
    if *stop.borrow() {
        return Ended::Stop;
    }
    let open = async {
        let tcp = TcpStream::connect(cfg.addr).await?;
        let tls = TlsConnector::from(tls)
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut req = format!("wss://localhost{}", proto::TUNNEL_PATH).into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        let ws_cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(ws_cfg)).await?;
        anyhow::Ok(ws)
    };
    let mut ws = tokio::select! {
        _ = stop.changed() => return Ended::Stop,
        r = tokio::time::timeout(OPEN_TIMEOUT, open) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Ended::Failed(e),
            Err(_) => return Ended::Failed(anyhow::anyhow!("no tunnel within {OPEN_TIMEOUT:?}")),
        },
    };
    let limits = Limits::default();
    let mut seq = 0u64;
    let mut peer_seq = 0u64;
    let cluster_ref = ObjectRef::new(ObjectKind::Cluster, "", cluster);
    let status_of = |seq: u64, peer_seq: u64, hash: String| {
        Envelope::new(
            seq,
            peer_seq,
            Frame::Status(proto::Status {
                object: cluster_ref.clone(),
                generation: 1,
                observed_generation: Some(1),
                version: None,
                phase: Some("Connected".into()),
                conditions: vec![],
                outputs: Default::default(),
                hash,
                deleted: false,
            }),
        )
    };
    seq += 1;
    let hello = Envelope::new(
        seq,
        0,
        Frame::Hello(Hello {
            agent_version: "hub-loadgen".into(),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
        }),
    );
    let send = |env: &Envelope| -> anyhow::Result<Message> {
        Ok(Message::Binary(proto::encode(env, &limits)?.into()))
    };
    if let Err(e) = async { ws.send(send(&hello)?).await.map_err(anyhow::Error::from) }.await {
        return Ended::Failed(e);
    }
    let epoch = cfg.shared.epoch.load(Ordering::SeqCst);
    let inventory_hash = format!("inventory-{session_no}");
    let mut welcomed = false;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.heartbeat, cfg.heartbeat);
    let ended = loop {
        tokio::select! {
            _ = stop.changed() => break Ended::Stop,
            _ = tick.tick() => {
                seq += 1;
                let r = async {
                    ws.send(send(&status_of(seq, peer_seq, format!("{seq}")))?).await?;
                    anyhow::Ok(())
                }.await;
                if let Err(e) = r {
                    break Ended::Failed(e);
                }
                cfg.shared.frames.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => match msg {
                None => break Ended::Failed(anyhow::anyhow!("hub closed the tunnel")),
                Some(Err(e)) => break Ended::Failed(e.into()),
                Some(Ok(Message::Binary(b))) => {
                    let env = match proto::decode(&b, &limits) {
                        Ok(env) => env,
                        Err(e) => break Ended::Failed(e.into()),
                    };
                    peer_seq = env.seq;
                    let reply = match env.body {
                        Frame::Welcome(_) if !welcomed => {
                            welcomed = true;
                            *was_up = true;
                            ramp_permit.take();
                            cfg.shared.connected.fetch_add(1, Ordering::Relaxed);
                            seq += 1;
                            Some(Envelope::new(seq, peer_seq, Frame::Inventory(Inventory {
                                objects: vec![InventoryEntry {
                                    object: cluster_ref.clone(),
                                    version: 0,
                                    status_hash: inventory_hash.clone(),
                                }],
                                chunk: None,
                            })))
                        }
                        Frame::ResyncRequest(_) if welcomed => {
                            if epoch > *back_epoch {
                                *back_epoch = epoch;
                                cfg.shared.back.fetch_add(1, Ordering::Relaxed);
                                cfg.shared.returns[cfg.shared.second()]
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            seq += 1;
                            Some(status_of(seq, peer_seq, inventory_hash.clone()))
                        }
                        Frame::Goodbye(g) => {
                            break Ended::Goodbye(
                                g.retry_after_secs.map(|s| Duration::from_secs(s.into())),
                            );
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let r = async { ws.send(send(&reply)?).await?; anyhow::Ok(()) }.await;
                        if let Err(e) = r {
                            break Ended::Failed(e);
                        }
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    };
    if welcomed {
        cfg.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    ended
}

/// Longest a connection may take from TCP connect to the WebSocket upgrade.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The hub process, found by pid; restarted with the same command line,
/// environment and working directory (read from `/proc`).
struct HubProcess {
    pid: u32,
    argv: Vec<std::ffi::OsString>,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    cwd: PathBuf,
    /// Set once this load generator started the hub itself.
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

fn nul_separated(bytes: &[u8]) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| std::ffi::OsStr::from_bytes(s).to_owned())
        .collect()
}

impl HubProcess {
    fn find(pid: u32, log: PathBuf) -> anyhow::Result<Self> {
        let argv = nul_separated(&std::fs::read(format!("/proc/{pid}/cmdline"))?);
        let env = nul_separated(&std::fs::read(format!("/proc/{pid}/environ"))?)
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_string().ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.into(), v.into()))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        if argv.is_empty() {
            bail!("no command line for hub pid {pid}");
        }
        Ok(Self {
            pid,
            argv,
            env,
            cwd,
            child: None,
            log,
        })
    }

    /// Whether the process is gone (or a zombie: its sockets are closed).
    fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_none_or(|state| state == "Z" || state == "X"),
        }
    }

    /// Sends `signal` and waits (at most 60 s) until the process is gone.
    async fn stop(&mut self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: kill has no memory preconditions.
        if unsafe { libc::kill(self.pid as i32, signal) } != 0 {
            bail!(
                "kill({}, {signal}): {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
            } else if self.exited() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "hub pid {} still running 60 s after signal {signal}",
                    self.pid
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the hub again (same arguments, environment, directory).
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().cloned())
            .current_dir(&self.cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("restarting the hub")?;
        self.pid = child.id().context("restarted hub has no pid")?;
        self.child = Some(child);
        Ok(())
    }
}

/// How the hub is restarted in a storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Restart {
    /// SIGTERM: every tunnel gets `Goodbye{retry_after}`, then the hub exits.
    Graceful,
    /// SIGKILL: connections just break.
    Kill,
}

/// One storm's figures.
struct StormResult {
    kind: Restart,
    down_secs: f64,
    all_back_secs: Option<f64>,
    back: u64,
    attempts: Vec<u64>,
    returns: Vec<u64>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
}

/// Restarts the hub and waits (at most `timeout`) until every agent is back.
async fn storm(
    hub: &mut HubProcess,
    kind: Restart,
    shared: &Shared,
    tunnels: usize,
    timeout: Duration,
    settle: Duration,
) -> anyhow::Result<StormResult> {
    let rss_before = sample(hub.pid).map(|s| s.0);
    shared.begin_storm();
    let t0 = Instant::now();
    hub.stop(match kind {
        Restart::Graceful => libc::SIGTERM,
        Restart::Kill => libc::SIGKILL,
    })
    .await?;
    let down_secs = t0.elapsed().as_secs_f64();
    hub.start()?;
    let mut all_back_secs = None;
    while t0.elapsed() < timeout {
        if shared.back.load(Ordering::Relaxed) as usize >= tunnels {
            all_back_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = (t0.elapsed().as_secs() as usize + 1).min(STORM_SECONDS);
    let attempts = shared.attempts[..seconds]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let returns = shared.returns[..seconds]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    // Memory once the storm has passed: after the agents' next heartbeat.
    tokio::time::sleep(settle).await;
    let rss_after = sample(hub.pid).map(|s| s.0);
    Ok(StormResult {
        kind,
        down_secs,
        all_back_secs,
        back: shared.back.load(Ordering::Relaxed),
        attempts,
        returns,
        rss_before,
        rss_after,
    })
}

fn print_storm(r: &StormResult, tunnels: usize) {
    let name = match r.kind {
        Restart::Graceful => "graceful (SIGTERM, Goodbye with retry_after)",
        Restart::Kill => "kill -9",
    };
    println!("storm {name}: hub gone after {:.2} s", r.down_secs);
    match r.all_back_secs {
        Some(s) => println!(
            "storm {name}: all {tunnels} back (Hello, Welcome, Inventory answered) in {s:.1} s"
        ),
        None => println!(
            "storm {name}: only {} of {tunnels} back at the deadline",
            r.back
        ),
    }
    let peak = r.attempts.iter().copied().max().unwrap_or(0);
    println!("storm {name}: peak connection attempts {peak}/s");
    println!("storm {name}: second | connection attempts | agents back | back so far");
    let mut total = 0;
    for (i, (a, b)) in r.attempts.iter().zip(&r.returns).enumerate() {
        total += b;
        println!("storm {name}: {i:>4} | {a:>6} | {b:>6} | {total:>6}");
    }
    if let (Some(before), Some(after)) = (r.rss_before, r.rss_after) {
        println!(
            "storm {name}: hub VmRSS before {before} KiB, after {after} KiB (ratio {:.3})",
            after as f64 / before as f64
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls CryptoProvider was already installed"))?;
    proto::install_jwt_crypto();
    let args = Args::parse();
    let Args {
        state_dir,
        tunnels,
        mint,
        concurrency,
        heartbeat_secs,
        hold_secs,
        hub_pid,
        prefix,
        storm: storms,
        storm_timeout_secs,
        backoff_min,
        backoff_max,
    } = args;
    let fd_limit = raise_fd_limit();
    if (fd_limit as usize) < tunnels + 64 {
        bail!("fd limit {fd_limit} is too low for {tunnels} tunnels; raise `ulimit -n`");
    }
    let admin_addr: SocketAddr = std::fs::read_to_string(state_dir.join("admin-addr"))
        .context("admin-addr missing: is hub-sim serve running with this --state-dir?")?
        .trim()
        .parse()?;
    let admin_token = std::fs::read_to_string(state_dir.join("admin-token"))?
        .trim()
        .to_owned();
    let hub_url = std::fs::read_to_string(state_dir.join("hub-url"))?;
    let addr: SocketAddr = hub_url.trim().trim_start_matches("https://").parse()?;
    let ca_pem = Arc::new(std::fs::read_to_string(state_dir.join("ca.pem"))?);
    let admin = hub_sim::admin_client::AdminClient::new(admin_addr, admin_token);

    let base = hub_pid.and_then(sample);
    eprintln!("hub baseline: {base:?} (VmRSS KiB, cpu ticks); fd limit {fd_limit}");

    // Identities.
    let t0 = Instant::now();
    let ca = if mint {
        let store = hub_sim::store::Store::open(&state_dir)?;
        Some(Arc::new(hub_sim::ca::Ca::load_or_create(&store)?))
    } else {
        None
    };
    let enroll_cfg = Arc::new(tls_config(&ca_pem, None)?);
    let mut ids = Vec::with_capacity(tunnels);
    let mut pending = futures::stream::iter(0..tunnels)
        .map(|i| {
            let admin = admin.clone();
            let cluster = format!("{prefix}-{i}");
            let ca = ca.clone();
            let enroll_cfg = enroll_cfg.clone();
            async move {
                let issued = admin
                    .post(
                        "/v1/tokens",
                        &serde_json::json!({"cluster": cluster, "org": "load"}),
                    )
                    .await?;
                let (cert_pem, key_pem) = match &ca {
                    Some(ca) => {
                        let key = KeyPair::generate()?;
                        let csr = CertificateParams::new(Vec::<String>::new())?
                            .serialize_request(&key)?;
                        let cert = ca.sign_client_csr(
                            csr.pem()?.as_bytes(),
                            "load",
                            &cluster,
                            Duration::from_secs(24 * 3600),
                        )?;
                        (cert.pem, key.serialize_pem())
                    }
                    None => {
                        let token = issued["token"].as_str().context("no token")?;
                        enroll_one(addr, enroll_cfg, token).await?
                    }
                };
                anyhow::Ok(Identity {
                    cluster,
                    cert_pem,
                    key_pem,
                })
            }
        })
        .buffer_unordered(concurrency);
    while let Some(id) = pending.next().await {
        ids.push(id?);
    }
    let enroll_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} identities via {} in {enroll_secs:.1}s",
        ids.len(),
        if mint { "minting" } else { "enrollment" }
    );
    let after_enroll = hub_pid.and_then(sample);

    // Tunnels: one simulated agent per identity.
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heartbeat = Duration::from_secs(heartbeat_secs.max(1));
    let cfg = AgentCfg {
        addr,
        heartbeat,
        backoff_min: backoff_min.0,
        backoff_max: backoff_max.0,
        shared: shared.clone(),
        stop: stop_rx,
    };
    let t1 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    for id in ids {
        let permit = gate.clone().acquire_owned().await?;
        let tls = Arc::new(tls_config(&ca_pem, Some((&id.cert_pem, &id.key_pem)))?);
        tasks.spawn(agent(cfg.clone(), id.cluster, tls, permit));
    }
    let ramp_limit = Duration::from_secs(120.max(tunnels as u64 / 20));
    let deadline = Instant::now() + ramp_limit;
    while (shared.connected.load(Ordering::Relaxed) as usize) < tunnels {
        if Instant::now() > deadline {
            bail!(
                "only {} of {tunnels} tunnels up after {ramp_limit:?} ({} sessions ended early; last failure: {})",
                shared.connected.load(Ordering::Relaxed),
                shared.drops.load(Ordering::Relaxed),
                shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_deref()
                    .unwrap_or("none")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ramp_secs = t1.elapsed().as_secs_f64();
    let ramp_drops = shared.drops.load(Ordering::Relaxed);
    let last_error = |shared: &Shared| {
        shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "none".into())
    };
    let health = admin.get("/v1/health").await?;
    eprintln!(
        "{tunnels} tunnels up in {ramp_secs:.1}s ({ramp_drops} attempts retried); hub reports {} live tunnels",
        health["tunnels"]
    );
    // Let the ramp settle for one heartbeat, then measure over the hold window.
    tokio::time::sleep(heartbeat.min(Duration::from_secs(hold_secs / 4 + 1))).await;
    let start = hub_pid.and_then(sample);
    let frames0 = shared.frames.load(Ordering::Relaxed);
    let drops0 = shared.drops.load(Ordering::Relaxed);
    let m0 = Instant::now();
    let mut peak_rss = 0;
    while m0.elapsed() < Duration::from_secs(hold_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, _)) = hub_pid.and_then(sample) {
            peak_rss = peak_rss.max(rss);
        }
    }
    let hold = m0.elapsed().as_secs_f64();
    let end = hub_pid.and_then(sample);
    let still = shared.connected.load(Ordering::Relaxed);
    let hold_drops = shared.drops.load(Ordering::Relaxed) - drops0;
    let sent = shared.frames.load(Ordering::Relaxed) - frames0;

    println!("tunnels: {tunnels} (still connected at end: {still})");
    println!(
        "identities: {} in {enroll_secs:.1} s",
        if mint {
            "minted from the state dir CA"
        } else {
            "enrolled via POST /v1/enroll"
        }
    );
    println!(
        "ramp-up: {ramp_secs:.1} s (concurrency {concurrency}, {ramp_drops} attempts retried)"
    );
    println!(
        "heartbeat: one Status frame per tunnel every {heartbeat_secs} s; hub pings every 20 s"
    );
    println!(
        "status frames sent during the {hold:.0} s window: {sent} ({:.1}/s); sessions dropped in it: {hold_drops}",
        sent as f64 / hold
    );
    if let (Some(b), Some(s), Some(e)) = (base.or(after_enroll), start, end) {
        let after = after_enroll.unwrap_or(b);
        let per_tunnel = (e.0.saturating_sub(after.0)) as f64 / tunnels as f64;
        let cpu = (e.1 - s.1) as f64 / clk_tck() / hold * 100.0;
        println!(
            "hub VmRSS: baseline {} KiB, after identities {} KiB, with tunnels at the end of the window {} KiB (peak {peak_rss} KiB)",
            b.0, after.0, e.0
        );
        println!("hub RSS per tunnel: {per_tunnel:.1} KiB");
        println!("hub CPU while holding: {cpu:.1}% of one core");
    }

    // Reconnect storms: restart the hub, wait for every agent to be back.
    let mut hub = None;
    if !storms.is_empty() {
        let pid = hub_pid.context("--storm needs --hub-pid")?;
        hub = Some(HubProcess::find(pid, state_dir.join("hub-restarts.log"))?);
    }
    let mut failed = None;
    for kind in storms {
        let Some(hub) = hub.as_mut() else { break };
        let r = storm(
            hub,
            kind,
            &shared,
            tunnels,
            Duration::from_secs(storm_timeout_secs),
            heartbeat,
        )
        .await?;
        print_storm(&r, tunnels);
        println!(
            "storm {kind:?}: last session failure: {}",
            last_error(&shared)
        );
        if r.all_back_secs.is_none() {
            failed = Some(format!(
                "{kind:?} storm: only {} of {tunnels} agents back within {storm_timeout_secs} s",
                r.back
            ));
            break;
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(hub) = hub.as_mut().filter(|h| h.child.is_some()) {
        eprintln!("stopping the hub this run restarted (pid {})", hub.pid);
        hub.stop(libc::SIGTERM).await?;
    }
    if let Some(f) = failed {
        bail!(f);
    }
    Ok(())
}
