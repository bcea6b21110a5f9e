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
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use rcgen::{CertificateParams, KeyPair};
use vworkspace_protocol::{self as proto};

mod agent;
/// The agent's reconnect policy, compiled from the agent's own source file so
/// the simulated agents back off exactly as the real one does.
#[path = "../../../../agent/src/hub/backoff.rs"]
mod backoff;
mod identity;
mod process;
mod reenroll;
mod storm;

use agent::*;
use identity::*;
use process::*;
use reenroll::*;
use storm::*;

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
    /// At the end, re-issue a CA-pinned join token for every cluster and
    /// make all of them re-enroll at once, each from its own loopback
    /// address, then reconnect with the new certificates.
    #[arg(long)]
    reenroll_storm: bool,
    /// Enrollment requests in flight at once during the re-enrollment storm
    /// (open files, and the hub's cap of 1,024 connections without a
    /// certificate, which tunnel handshakes share).
    #[arg(long, default_value_t = 800)]
    reenroll_concurrency: usize,
    /// Longest the re-enrollment storm may take until every tunnel is back
    /// with its new certificate (seconds).
    #[arg(long, default_value_t = 900)]
    reenroll_timeout_secs: u64,
    /// The hub's whole-hub enrollment rate (`hub-sim serve --enroll-rate`),
    /// to compare the accepted rate with.
    #[arg(long, default_value_t = 50.0)]
    enroll_rate: f64,
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
        reenroll_storm,
        reenroll_concurrency,
        reenroll_timeout_secs,
        enroll_rate,
    } = args;
    if reenroll_storm && tunnels > MAX_SOURCES {
        bail!(
            "--reenroll-storm gives each cluster its own loopback address: at most {MAX_SOURCES}"
        );
    }
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
    let mut agents = Vec::with_capacity(ids.len());
    for (i, id) in ids.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await?;
        let config = Arc::new(tls_config(&ca_pem, Some((&id.cert_pem, &id.key_pem)))?);
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(Tls {
            generation: 0,
            config,
        });
        // Own loopback addresses only where the hub's per-address limit matters.
        let source = reenroll_storm.then(|| source_address(i));
        tasks.spawn(agent(
            cfg.clone(),
            id.cluster.clone(),
            source,
            tls_rx,
            permit,
        ));
        agents.push(SimAgent {
            cluster: id.cluster,
            source,
            tls: tls_tx,
        });
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
    if failed.is_none() && reenroll_storm {
        let r = reenroll(
            &Reenroll {
                admin: &admin,
                addr,
                ca_pem: &ca_pem,
                concurrency: reenroll_concurrency,
                timeout: Duration::from_secs(reenroll_timeout_secs),
                hub_pid: hub.as_ref().map(|h| h.pid).or(hub_pid),
                settle: heartbeat,
            },
            &agents,
            &shared,
        )
        .await?;
        print_reenroll(&r, tunnels, enroll_rate);
        let health = admin.get("/v1/health").await?;
        println!("reenroll: hub health after the storm: {health}");
        if r.tunnels_back_secs.is_none() {
            failed = Some(format!(
                "re-enrollment storm: {} of {tunnels} enrolled and {} back within {reenroll_timeout_secs} s",
                r.enrolled, r.back
            ));
        } else if r.refused > 0 {
            failed = Some(format!(
                "re-enrollment storm: {} refused for good (last: {})",
                r.refused,
                r.last_refusal.as_deref().unwrap_or("-")
            ));
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    drop(agents);
    if let Some(hub) = hub.as_mut().filter(|h| h.child.is_some()) {
        eprintln!("stopping the hub this run restarted (pid {})", hub.pid);
        hub.stop(libc::SIGTERM).await?;
    }
    if let Some(f) = failed {
        bail!(f);
    }
    Ok(())
}
