//! Reconnect storms: restart the hub (gracefully or with SIGKILL) and
//! measure until every simulated agent is back.

use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use super::*;

/// How the hub is restarted in a storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Restart {
    /// SIGTERM: every tunnel gets `Goodbye{retry_after}`, then the hub exits.
    Graceful,
    /// SIGKILL: connections just break.
    Kill,
}

/// One storm's figures.
pub(crate) struct StormResult {
    pub(crate) kind: Restart,
    pub(crate) down_secs: f64,
    pub(crate) all_back_secs: Option<f64>,
    pub(crate) back: u64,
    pub(crate) attempts: Vec<u64>,
    pub(crate) returns: Vec<u64>,
    pub(crate) rss_before: Option<u64>,
    pub(crate) rss_after: Option<u64>,
}

/// Restarts the hub and waits (at most `timeout`) until every agent is back.
pub(crate) async fn storm(
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

pub(crate) fn print_storm(r: &StormResult, tunnels: usize) {
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
