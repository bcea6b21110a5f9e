//! The re-enrollment storm: the operator re-issues a CA-pinned join token
//! for every cluster at once (after a CA rotation or a mass revocation), and
//! every agent enrolls again and reconnects with its new certificate.
//!
//! Each simulated cluster enrolls from its own loopback address (as real
//! clusters have their own addresses), so the hub's per-address limit does
//! not apply and its whole-hub limit paces the crowd. A `429` is waited out
//! with the agent's own policy (`backoff::after_failure`, the function the
//! agent uses), a connection failure with its full-jitter backoff, and any
//! other refusal is final, as it is for the agent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use vworkspace_protocol::enrollment::EnrollResponse;

use super::*;

/// Loopback addresses [`source_address`] hands out.
pub(crate) const MAX_SOURCES: usize = 250 * 250 * 126;

/// The loopback address of simulated cluster `i`: 127.a.b.c with a from 1,
/// and b and c in 1..=250 (no .0 or .255, which some tools treat specially).
pub(crate) fn source_address(i: usize) -> IpAddr {
    let (a, rest) = (1 + i / 62_500, i % 62_500);
    IpAddr::V4(Ipv4Addr::new(
        127,
        a as u8,
        (rest / 250 + 1) as u8,
        (rest % 250 + 1) as u8,
    ))
}

/// One simulated agent as the storm sees it.
pub(crate) struct SimAgent {
    pub(crate) cluster: String,
    pub(crate) source: Option<IpAddr>,
    /// Hands the agent's tunnel its new certificate.
    pub(crate) tls: tokio::sync::watch::Sender<Tls>,
}

/// What the storm needs besides the agents.
pub(crate) struct Reenroll<'a> {
    pub(crate) admin: &'a hub_sim::admin_client::AdminClient,
    pub(crate) addr: SocketAddr,
    pub(crate) ca_pem: &'a str,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
    pub(crate) hub_pid: Option<u32>,
    pub(crate) settle: Duration,
}

/// Per-second counters of the storm, from the moment all tokens are out.
struct Counters {
    start: Instant,
    attempts: Vec<AtomicU64>,
    /// Requests by agents that had asked before.
    retries: Vec<AtomicU64>,
    limited: Vec<AtomicU64>,
    accepted: Vec<AtomicU64>,
    /// How many 429s told each whole number of seconds (the last bin: more).
    told: Vec<AtomicU64>,
    conn_failures: AtomicU64,
    refused: AtomicU64,
    enrolled: AtomicU64,
    /// Microseconds from the start to the latest acceptance.
    last_accept_us: AtomicU64,
    most_attempts: AtomicU64,
    last_refusal: std::sync::Mutex<Option<String>>,
    last_conn_failure: std::sync::Mutex<Option<String>>,
}

const TOLD_BINS: usize = 602;

impl Counters {
    fn new() -> Self {
        let v = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            start: Instant::now(),
            attempts: v(STORM_SECONDS),
            retries: v(STORM_SECONDS),
            limited: v(STORM_SECONDS),
            accepted: v(STORM_SECONDS),
            told: v(TOLD_BINS),
            conn_failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            enrolled: AtomicU64::new(0),
            last_accept_us: AtomicU64::new(0),
            most_attempts: AtomicU64::new(0),
            last_refusal: std::sync::Mutex::new(None),
            last_conn_failure: std::sync::Mutex::new(None),
        }
    }

    fn bump(&self, v: &[AtomicU64]) {
        let s = (self.start.elapsed().as_secs() as usize).min(v.len() - 1);
        v[s].fetch_add(1, Ordering::Relaxed);
    }
}

/// The storm's figures.
pub(crate) struct ReenrollResult {
    pub(crate) issue_secs: f64,
    pub(crate) enrolled: u64,
    pub(crate) back: u64,
    pub(crate) enrolled_secs: Option<f64>,
    pub(crate) last_accept_secs: f64,
    pub(crate) tunnels_back_secs: Option<f64>,
    pub(crate) attempts: Vec<u64>,
    pub(crate) retries: Vec<u64>,
    pub(crate) limited: Vec<u64>,
    pub(crate) accepted: Vec<u64>,
    pub(crate) returns: Vec<u64>,
    pub(crate) told: Vec<u64>,
    pub(crate) conn_failures: u64,
    pub(crate) refused: u64,
    pub(crate) most_attempts: u64,
    pub(crate) last_refusal: Option<String>,
    pub(crate) last_conn_failure: Option<String>,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_peak: Option<u64>,
    pub(crate) rss_final: Option<u64>,
}

/// Re-issues a token per cluster, then lets every agent re-enroll at once and
/// waits (at most `timeout`) until every tunnel is back with its new
/// certificate.
pub(crate) async fn reenroll(
    r: &Reenroll<'_>,
    agents: &[SimAgent],
    shared: &Shared,
) -> anyhow::Result<ReenrollResult> {
    // The operator's part: a new token for every existing cluster. Like
    // `hub-sim token create --cluster <id> --org <org>`, it pins the hub CA.
    let t_issue = Instant::now();
    let mut tokens = vec![String::new(); agents.len()];
    let mut issued = futures::stream::iter(agents.iter().enumerate())
        .map(|(i, a)| async move {
            let v = r
                .admin
                .post(
                    "/v1/tokens",
                    &serde_json::json!({"cluster": a.cluster, "org": "load"}),
                )
                .await?;
            let t = v["token"]
                .as_str()
                .context("the admin API answered no token")?;
            anyhow::Ok((i, t.to_owned()))
        })
        .buffer_unordered(32);
    while let Some(t) = issued.next().await {
        let (i, t) = t?;
        tokens[i] = t;
    }
    drop(issued);
    let issue_secs = t_issue.elapsed().as_secs_f64();
    eprintln!(
        "reenroll: {} join tokens re-issued in {issue_secs:.1}s",
        agents.len()
    );

    let rss_before = r.hub_pid.and_then(sample).map(|s| s.0);
    let enroll_cfg = Arc::new(tls_config(r.ca_pem, None)?);
    let counters = Arc::new(Counters::new());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(r.concurrency.max(1)));
    shared.min_generation.store(1, Ordering::SeqCst);
    shared.begin_storm();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (a, token) in agents.iter().zip(tokens) {
        tasks.spawn(enroll_agent(
            r.addr,
            a.source,
            token,
            enroll_cfg.clone(),
            r.ca_pem.to_owned(),
            a.tls.clone(),
            counters.clone(),
            in_flight.clone(),
        ));
    }
    let n = agents.len() as u64;
    let (mut enrolled_secs, mut tunnels_back_secs) = (None, None);
    let mut rss_peak = rss_before;
    let mut next_sample = Instant::now();
    while t0.elapsed() < r.timeout {
        let enrolled = counters.enrolled.load(Ordering::Relaxed);
        if enrolled_secs.is_none() && enrolled >= n {
            enrolled_secs = Some(t0.elapsed().as_secs_f64());
        }
        if shared.back.load(Ordering::Relaxed) >= n {
            tunnels_back_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        // Every agent either enrolled or gave up, and the tunnels of those that
        // enrolled are all back: nothing more will happen.
        if tasks.is_empty() && enrolled < n && shared.back.load(Ordering::Relaxed) >= enrolled {
            break;
        }
        while let Some(j) = tasks.try_join_next() {
            j?;
        }
        if Instant::now() >= next_sample {
            if let Some((rss, _)) = r.hub_pid.and_then(sample) {
                rss_peak = Some(rss_peak.unwrap_or(0).max(rss));
            }
            next_sample += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.abort_all();
    let seconds = (t0.elapsed().as_secs() as usize + 1).min(STORM_SECONDS);
    let load = |v: &[AtomicU64], k: usize| -> Vec<u64> {
        v[..k].iter().map(|c| c.load(Ordering::Relaxed)).collect()
    };
    // Memory once the storm has passed: after the agents' next heartbeat.
    tokio::time::sleep(r.settle).await;
    let rss_final = r.hub_pid.and_then(sample).map(|s| s.0);
    let c = &counters;
    Ok(ReenrollResult {
        issue_secs,
        enrolled: c.enrolled.load(Ordering::Relaxed),
        back: shared.back.load(Ordering::Relaxed),
        enrolled_secs,
        tunnels_back_secs,
        last_accept_secs: c.last_accept_us.load(Ordering::Relaxed) as f64 / 1e6,
        attempts: load(&c.attempts, seconds),
        retries: load(&c.retries, seconds),
        limited: load(&c.limited, seconds),
        accepted: load(&c.accepted, seconds),
        returns: load(&shared.returns, seconds),
        told: load(&c.told, TOLD_BINS),
        conn_failures: c.conn_failures.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        most_attempts: c.most_attempts.load(Ordering::Relaxed),
        last_refusal: c
            .last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        last_conn_failure: c
            .last_conn_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        rss_before,
        rss_peak,
        rss_final,
    })
}

/// One agent's re-enrollment: request, wait as the agent would, and on
/// success hand the new certificate to its tunnel.
#[allow(clippy::too_many_arguments)]
async fn enroll_agent(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: String,
    enroll_cfg: Arc<rustls::ClientConfig>,
    ca_pem: String,
    tls: tokio::sync::watch::Sender<Tls>,
    c: Arc<Counters>,
    in_flight: Arc<tokio::sync::Semaphore>,
) {
    // The agent's enrollment backoff bounds (agent/src/hub/enroll).
    let (min, max) = (Duration::from_secs(2), Duration::from_secs(300));
    let (key, body) = match enroll_body(&token) {
        Ok(kb) => kb,
        Err(e) => {
            refuse(&c, format!("building the request: {e:#}"));
            return;
        }
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        c.most_attempts
            .fetch_max(u64::from(attempt), Ordering::Relaxed);
        c.bump(&c.attempts);
        if attempt > 1 {
            c.bump(&c.retries);
        }
        let answer = {
            // One pool of requests in flight for every simulated agent (open
            // files; the hub's cap on connections without a certificate). A
            // retry that falls due while the first wave still fills the pool
            // waits its turn, so it reaches the hub after its slot, which the
            // hub honours.
            let Ok(_permit) = in_flight.acquire().await else {
                return;
            };
            tokio::time::timeout(
                Duration::from_secs(30),
                enroll_request(source, addr, enroll_cfg.clone(), &body),
            )
            .await
        };
        let retry_after = match answer {
            Ok(Ok(Enrolled::Done(bytes))) => {
                let identity = serde_json::from_slice::<EnrollResponse>(&bytes)
                    .map_err(anyhow::Error::from)
                    .and_then(|resp| {
                        tls_config(&ca_pem, Some((&resp.certificate_pem, &key.serialize_pem())))
                    });
                match identity {
                    Ok(config) => {
                        c.bump(&c.accepted);
                        c.enrolled.fetch_add(1, Ordering::Relaxed);
                        c.last_accept_us
                            .fetch_max(c.start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        tls.send_modify(|t| {
                            t.generation += 1;
                            t.config = Arc::new(config);
                        });
                    }
                    Err(e) => refuse(&c, format!("unusable answer: {e:#}")),
                }
                return;
            }
            Ok(Ok(Enrolled::RetryAfter(wait))) => {
                c.bump(&c.limited);
                let bin = (wait.as_secs() as usize).min(TOLD_BINS - 1);
                c.told[bin].fetch_add(1, Ordering::Relaxed);
                Some(wait)
            }
            Ok(Ok(Enrolled::Refused { status, body })) => {
                refuse(&c, format!("{status}: {body}"));
                return;
            }
            Ok(Err(e)) => {
                conn_failure(&c, format!("{e:#}"));
                None
            }
            Err(_) => {
                conn_failure(&c, "no answer within 30 s".into());
                None
            }
        };
        tokio::time::sleep(backoff::after_failure(retry_after, min, max, attempt)).await;
    }
}

fn refuse(c: &Counters, why: String) {
    c.refused.fetch_add(1, Ordering::Relaxed);
    *c.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
}

fn conn_failure(c: &Counters, why: String) {
    c.conn_failures.fetch_add(1, Ordering::Relaxed);
    *c.last_conn_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(why);
}

pub(crate) fn print_reenroll(r: &ReenrollResult, n: usize, rate: f64) {
    let p = "reenroll:";
    println!(
        "{p} {n} CA-pinned join tokens re-issued through the admin API in {:.1} s",
        r.issue_secs
    );
    match r.enrolled_secs {
        Some(s) => println!("{p} all {n} re-enrolled in {s:.1} s"),
        None => println!("{p} only {} of {n} re-enrolled at the deadline", r.enrolled),
    }
    match r.tunnels_back_secs {
        Some(s) => println!(
            "{p} all {n} tunnels back with the new certificates (Hello, Welcome, Inventory answered) in {s:.1} s"
        ),
        None => println!(
            "{p} only {} of {n} tunnels back with new certificates at the deadline",
            r.back
        ),
    }
    let total: u64 = r.accepted.iter().sum();
    let limited: u64 = r.limited.iter().sum();
    let attempts: u64 = r.attempts.iter().sum();
    // Rate over the paced part: from the end of the first second (the
    // burst) to the last acceptance.
    let burst = r.accepted.first().copied().unwrap_or(0);
    let paced_secs = r.last_accept_secs - 1.0;
    let paced_rate = if paced_secs > 0.0 {
        (total - burst) as f64 / paced_secs
    } else {
        0.0
    };
    let peak_accepted = r.accepted.iter().skip(1).copied().max().unwrap_or(0);
    let peak_attempts = r.attempts.iter().copied().max().unwrap_or(0);
    let peak_retries = r.retries.iter().copied().max().unwrap_or(0);
    println!(
        "{p} accepted {total}: {burst} in the first second (the burst), then {paced_rate:.1}/s over {paced_secs:.1} s against the configured {rate}/s (ratio {:.3}); peak {peak_accepted}/s after the first second",
        paced_rate / rate
    );
    println!(
        "{p} requests {attempts}: 429 answered {limited}, other refusals {} (refused for good), connection failures retried {}; most attempts by one agent {}",
        r.refused, r.conn_failures, r.most_attempts
    );
    if let Some(why) = &r.last_refusal {
        println!("{p} last refusal: {why}");
    }
    if let Some(why) = &r.last_conn_failure {
        println!("{p} last connection failure: {why}");
    }
    println!(
        "{p} herd: peak {peak_attempts} requests/s (the first wave: every agent at once); retries (requests after a 429 or a failure) peak at {peak_retries}/s against peak {peak_accepted} accepted/s (ratio {:.2})",
        peak_retries as f64 / peak_accepted.max(1) as f64
    );
    let told: Vec<(usize, u64)> = r
        .told
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| *c > 0)
        .collect();
    if let (Some(first), Some(last_told)) = (told.first(), told.last()) {
        let most = told.iter().map(|(_, c)| *c).max().unwrap_or(0);
        println!(
            "{p} Retry-After told: {} to {} s, {} distinct values, at most {most} answers told the same value",
            first.0,
            last_told.0,
            told.len()
        );
    }
    if let (Some(b), Some(pk), Some(f)) = (r.rss_before, r.rss_peak, r.rss_final) {
        println!(
            "{p} hub VmRSS before {b} KiB, peak {pk} KiB, final {f} KiB (final / before {:.3})",
            f as f64 / b as f64
        );
        println!("figure reenroll_hub_rss_before_kib {b}");
        println!("figure reenroll_hub_rss_peak_kib {pk}");
        println!("figure reenroll_hub_rss_final_kib {f}");
    }
    println!(
        "{p} second | requests | of which retries | 429 | accepted | accepted so far | tunnels back | back so far"
    );
    let (mut acc, mut back) = (0, 0);
    for i in 0..r.attempts.len() {
        let (a, re, l) = (r.attempts[i], r.retries[i], r.limited[i]);
        let (ok, ret) = (r.accepted[i], r.returns[i]);
        acc += ok;
        back += ret;
        println!(
            "{p} {i:>4} | {a:>6} | {re:>6} | {l:>6} | {ok:>5} | {acc:>6} | {ret:>5} | {back:>6}"
        );
    }
    println!("figure reenroll_clusters {n}");
    if let Some(s) = r.enrolled_secs {
        println!("figure reenroll_all_enrolled_secs {s:.2}");
    }
    if let Some(s) = r.tunnels_back_secs {
        println!("figure reenroll_all_back_secs {s:.2}");
    }
    println!("figure reenroll_configured_rate {rate}");
    println!("figure reenroll_accepted_per_sec {paced_rate:.2}");
    println!("figure reenroll_peak_accepted_per_sec {peak_accepted}");
    println!("figure reenroll_peak_requests_per_sec {peak_attempts}");
    println!("figure reenroll_peak_retries_per_sec {peak_retries}");
    println!("figure reenroll_429 {limited}");
    println!("figure reenroll_refused {}", r.refused);
    println!("figure reenroll_connection_failures {}", r.conn_failures);
    println!("figure reenroll_most_attempts {}", r.most_attempts);
}
