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
use vworkspace_protocol::{self as proto, Envelope, Frame, Hello, Limits, ObjectKind, ObjectRef};

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

/// One simulated agent: connect, Hello, then a Status every heartbeat.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    addr: SocketAddr,
    ca_pem: Arc<String>,
    id: Identity,
    heartbeat: Duration,
    connected: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
    ramp_permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    // Held until Welcome, so at most `concurrency` handshakes run at once.
    let mut ramp_permit = Some(ramp_permit);
    let cfg = tls_config(&ca_pem, Some((&id.cert_pem, &id.key_pem)))?;
    drop(id.cert_pem);
    drop(id.key_pem);
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(cfg))
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
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(ws_cfg)).await?;
    let limits = Limits::default();
    let mut seq = 0u64;
    let mut peer_seq = 0u64;
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
    ws.send(Message::Binary(proto::encode(&hello, &limits)?.into()))
        .await?;
    let mut counted = false;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut stop = stop;
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            _ = tick.tick() => {
                seq += 1;
                let status = Envelope::new(seq, peer_seq, Frame::Status(proto::Status {
                    object: ObjectRef::new(ObjectKind::Cluster, "", &id.cluster),
                    generation: 1,
                    observed_generation: Some(1),
                    version: None,
                    phase: Some("Connected".into()),
                    conditions: vec![],
                    outputs: Default::default(),
                    hash: format!("{seq}"),
                    deleted: false,
                }));
                if let Err(e) = ws.send(Message::Binary(proto::encode(&status, &limits)?.into())).await {
                    break Err(e.into());
                }
                frames.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => match msg {
                None => break Err(anyhow::anyhow!("hub closed the tunnel")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(Message::Binary(b))) => {
                    let env = proto::decode(&b, &limits)?;
                    peer_seq = env.seq;
                    match env.body {
                        Frame::Welcome(_) if !counted => {
                            counted = true;
                            ramp_permit.take();
                            connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Frame::Goodbye(g) => break Err(anyhow::anyhow!("goodbye: {}", g.reason)),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    };
    if counted {
        connected.fetch_sub(1, Ordering::Relaxed);
    }
    let _ = ws.close(None).await;
    result
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

    // Tunnels.
    let connected = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heartbeat = Duration::from_secs(heartbeat_secs.max(1));
    let t1 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    for id in ids {
        let permit = gate.clone().acquire_owned().await?;
        let (ca_pem, connected, frames, stop) = (
            ca_pem.clone(),
            connected.clone(),
            frames.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            let cluster = id.cluster.clone();
            tunnel(addr, ca_pem, id, heartbeat, connected, frames, stop, permit)
                .await
                .with_context(|| cluster)
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (connected.load(Ordering::Relaxed) as usize) < tunnels {
        if Instant::now() > deadline {
            bail!(
                "only {} of {tunnels} tunnels up after 120 s",
                connected.load(Ordering::Relaxed)
            );
        }
        if let Ok(Some(Ok(Err(e)))) =
            tokio::time::timeout(Duration::from_millis(10), tasks.join_next()).await
        {
            bail!("tunnel failed during ramp-up: {e:#}");
        }
    }
    let ramp_secs = t1.elapsed().as_secs_f64();
    let health = admin.get("/v1/health").await?;
    eprintln!(
        "{tunnels} tunnels up in {ramp_secs:.1}s; hub reports {} live tunnels",
        health["tunnels"]
    );
    // Let the ramp settle for one heartbeat, then measure over the hold window.
    tokio::time::sleep(heartbeat.min(Duration::from_secs(hold_secs / 4 + 1))).await;
    let start = hub_pid.and_then(sample);
    let frames0 = frames.load(Ordering::Relaxed);
    let m0 = Instant::now();
    let mut peak_rss = 0;
    while m0.elapsed() < Duration::from_secs(hold_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, _)) = hub_pid.and_then(sample) {
            peak_rss = peak_rss.max(rss);
        }
        if let Ok(Some(Ok(Err(e)))) =
            tokio::time::timeout(Duration::from_millis(1), tasks.join_next()).await
        {
            bail!("tunnel dropped while holding: {e:#}");
        }
    }
    let hold = m0.elapsed().as_secs_f64();
    let end = hub_pid.and_then(sample);
    let still = connected.load(Ordering::Relaxed);
    let sent = frames.load(Ordering::Relaxed) - frames0;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}

    println!("tunnels: {tunnels} (still connected at end: {still})");
    println!(
        "identities: {} in {enroll_secs:.1} s",
        if mint {
            "minted from the state dir CA"
        } else {
            "enrolled via POST /v1/enroll"
        }
    );
    println!("ramp-up: {ramp_secs:.1} s (concurrency {concurrency})");
    println!(
        "heartbeat: one Status frame per tunnel every {heartbeat_secs} s; hub pings every 20 s"
    );
    println!(
        "status frames sent during the {hold:.0} s window: {sent} ({:.1}/s)",
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
    Ok(())
}
