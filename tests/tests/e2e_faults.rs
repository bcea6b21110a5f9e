//! Faults in the middle of steps, in a loop with random timing: the agent
//! process is SIGKILLed, hub-sim is SIGKILLed and restarted on its state, the
//! connection is cut by hub-sim's fault switches, frames are delayed and
//! duplicated. After each round the loop must converge: every intent acked,
//! none lost, none applied twice, and the status at the hub equal to the
//! cluster's.
//!
//! Reproducible: `VWS_E2E_SEED` (printed) picks every random choice;
//! `VWS_E2E_FAULT_ITERATIONS` sets the number of rounds (default 40);
//! `VWS_E2E_HISTORY_LIMIT` the agent's Operation history limit (default 1000);
//! `VWS_E2E_APISERVER_RESTARTS=1` adds kube-apiserver restarts (SIGKILL and
//! start again on the same etcd) to the faults, as `tests/soak` does (off by
//! default: the shorter run keeps its seeded sequence).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;
use vworkspace_e2e::e2e::{self, world::World};

const DEFAULT_SEED: u64 = 20_261_127;
const DEFAULT_ITERATIONS: usize = 40;
/// How long one round may take to converge after its fault.
const CONVERGE: Duration = Duration::from_secs(120);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillAgent,
    KillHub,
    CutConnection,
    DelayAndDuplicate,
    RestartApiServer,
    None,
}

async fn jitter(rng: &mut rand::rngs::StdRng, max_ms: u64) {
    let ms = rng.random_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Waits until the hub and the cluster agree and every Operation finished.
async fn converge(w: &World, round: usize, seed: u64) -> e2e::DeliveryReport {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let r = e2e::delivery_report(&w.client, w.hub.admin(), &w.cluster, &w.agent_log()).await;
        let mut problems = match &r {
            Ok(r) => r.problems.clone(),
            Err(e) => vec![e.to_string()],
        };
        if problems.is_empty() {
            for o in e2e::hub_objects(w.hub.admin(), &w.cluster)
                .await
                .unwrap_or_default()
            {
                if o["kind"] == "Operation"
                    && o["status"]["phase"] != "Succeeded"
                    && !e2e::history_cleaned(&o)
                {
                    problems.push(format!(
                        "Operation {} is {}",
                        o["name"], o["status"]["phase"]
                    ));
                }
                if o["kind"] == "ApplicationInstance"
                    && o["deleted"] != true
                    && !e2e::has_condition(&o["status"]["conditions"], "Ready", "True", "")
                {
                    problems.push(format!(
                        "ApplicationInstance {} not Ready at the hub",
                        o["name"]
                    ));
                }
            }
        }
        match r {
            Ok(r) if problems.is_empty() => return r,
            Ok(r) if r.duplicated > 0 => {
                panic!("round {round} (seed {seed}): an intent was applied twice: {problems:?}")
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "round {round} (seed {seed}, rerun with VWS_E2E_SEED={seed}) did not converge within {CONVERGE:?}: {problems:#?}\n{}",
                w.log_tails()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_middle_of_steps_lose_and_duplicate_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = env_u64("VWS_E2E_SEED", DEFAULT_SEED);
    let iterations = env_u64("VWS_E2E_FAULT_ITERATIONS", DEFAULT_ITERATIONS as u64) as usize;
    println!(
        "fault loop: seed {seed} (set VWS_E2E_SEED to reproduce), {iterations} rounds (VWS_E2E_FAULT_ITERATIONS)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Finished Operations are kept (history limit, default 1000 here): when
    // the agent's history cleanup deletes a hub-declared Operation while the
    // tunnel is down, the deletion never reaches the hub and its status stays
    // stale (seed 7, 120 rounds, VWS_E2E_HISTORY_LIMIT=10 shows it).
    let history = env_u64("VWS_E2E_HISTORY_LIMIT", 1000);
    let apiserver_restarts = env_u64("VWS_E2E_APISERVER_RESTARTS", 0) == 1;
    let mut w = World::start_with(
        "e2e-faults",
        vec!["--operation-history-limit".into(), history.to_string()],
    )
    .await
    .expect("starting hub-sim and the agent");
    let (cluster, ns) = (w.cluster.clone(), w.app_ns.clone());
    let started = std::time::Instant::now();

    e2e::apply(w.hub.admin(), &cluster, &w.app_manifest("app", "0.1.0", 1))
        .await
        .unwrap();
    converge(&w, 0, seed).await;

    let mut counts: std::collections::BTreeMap<Fault, usize> = Default::default();
    let mut app_version = 1u32;
    let mut converged = 0usize;
    for round in 1..=iterations {
        // The step: a new version of the app, a burst of two, or a backup.
        let step = rng.random_range(0..3u8);
        let hub = w.hub.admin().clone();
        match step {
            0 | 1 => {
                for _ in 0..=step {
                    app_version += 1;
                    // A real Helm upgrade or downgrade between the two
                    // versions of the test chart, with a new value each time.
                    let chart = if app_version.is_multiple_of(2) {
                        "0.2.0"
                    } else {
                        "0.1.0"
                    };
                    let m = w.app_manifest("app", chart, app_version % 3 + 1);
                    e2e::apply(&hub, &cluster, &m).await.unwrap();
                }
            }
            _ => {
                let m = e2e::op_manifest(
                    &ns,
                    &format!("backup-{round}"),
                    "app",
                    "Backup",
                    "velero",
                    json!({}),
                );
                e2e::apply(&hub, &cluster, &m).await.unwrap();
            }
        }
        // The fault, at a random point of the step.
        let kinds = if apiserver_restarts { 6 } else { 5 };
        let fault = match rng.random_range(0..kinds) {
            0 => Fault::KillAgent,
            1 => Fault::KillHub,
            2 => Fault::CutConnection,
            3 => Fault::DelayAndDuplicate,
            5 => Fault::RestartApiServer,
            _ => Fault::None,
        };
        *counts.entry(fault).or_default() += 1;
        jitter(&mut rng, 600).await;
        match fault {
            Fault::KillAgent => {
                w.agent.kill();
                jitter(&mut rng, 1500).await;
                w.agent.restart().await.expect("restarting the agent");
            }
            Fault::KillHub => {
                w.hub.kill();
                jitter(&mut rng, 1500).await;
                w.hub.restart().await.expect("restarting hub-sim");
            }
            Fault::CutConnection => {
                let n = rng.random_range(0..4u32);
                e2e::set_faults(&hub, &cluster, json!({"drop_after_frames": n}))
                    .await
                    .unwrap();
                jitter(&mut rng, 1500).await;
                e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
            }
            Fault::DelayAndDuplicate => {
                let delay = rng.random_range(20..300u64);
                e2e::set_faults(
                    &hub,
                    &cluster,
                    json!({"delay_ms": delay, "duplicate": true}),
                )
                .await
                .unwrap();
                jitter(&mut rng, 1500).await;
                e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
            }
            Fault::RestartApiServer => {
                vworkspace_e2e::shared()
                    .restart_apiserver()
                    .await
                    .expect("restarting kube-apiserver");
            }
            Fault::None => {}
        }
        let r = converge(&w, round, seed).await;
        converged += 1;
        println!(
            "round {round:>3}: step {step}, fault {fault:?}, intents so far {} ({:.0}s)",
            r.sent,
            started.elapsed().as_secs_f64()
        );
    }

    let report = converge(&w, iterations, seed).await;
    let applied = e2e::applied_per_intent(&w.agent_log());
    println!(
        "fault loop result: seed {seed}, iterations {iterations}, converged {converged}/{iterations}, intents sent {}, lost {}, duplicated {}, operations removed by the history limit {}, applied log lines {}, faults {counts:?}, {:.0}s",
        report.sent,
        report.lost,
        report.duplicated,
        report.history_cleaned,
        applied.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (report.lost, report.duplicated),
        (0, 0),
        "{:?}",
        report.problems
    );
    assert!(
        report.sent > iterations,
        "every round sends at least one intent"
    );
    let leaks = w.secret_leaks();
    assert!(leaks.is_empty(), "{leaks:?}");
    w.stop();
}
