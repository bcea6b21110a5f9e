//! A staged hub CA rotation (`hub-sim rotate-ca add|switch|retire`) as the
//! agent binary sees it, against the real kube-apiserver: an agent that is
//! online follows every step without a failed reconnect and keeps receiving
//! intents; an agent that is offline through the whole rotation cannot
//! verify the hub any more, says so on its Cluster object (`Connected=False`,
//! reason `HubCaUnknown`, with the operator's command), retries with its
//! jittered backoff (no tight loop), and comes back with a new join token.
//! Short certificate lifetimes make renewals happen during the rotation.

use std::time::{Duration, Instant};

use vworkspace_e2e::e2e::{
    self,
    world::{World, count_in_log},
};
use vworkspace_e2e::wait::eventually;

const STEP: Duration = Duration::from_secs(90);

/// Waits until the agent's log holds `needle` at least `n` times.
async fn wait_log(w: &World, needle: &str, n: usize) {
    let what = format!("{n}× {needle:?} in the agent log");
    let log = w.agent_log();
    let r = tokio::time::timeout(
        STEP + Duration::from_secs(5),
        eventually(&what, STEP, || async {
            let c = count_in_log(&log, needle);
            if c >= n {
                Ok(())
            } else {
                Err(format!("{c} so far"))
            }
        }),
    )
    .await;
    if r.is_err() {
        panic!("{what}: timed out\n{}", w.log_tails());
    }
}

/// `hub-sim rotate-ca STEP`, printed.
fn rotate(w: &World, step: &str) -> String {
    let out = w
        .hub
        .cli(&["rotate-ca", step])
        .unwrap_or_else(|e| panic!("hub-sim rotate-ca {step}: {e}"));
    println!("$ hub-sim rotate-ca {step}\n{out}");
    out
}

/// The lines of both logs that tell the story of a rotation, in order.
fn timeline(w: &World) -> String {
    w.timeline(&[
        "hub CA rotation step",
        "Hub CA bundle updated",
        "no longer issues from",
        "renewed",
        "certificate renewed",
        "Tunnel connected",
        "Tunnel connection failed",
        "Hub said goodbye",
        "TLS handshake refused",
        "cluster enrolled",
        "Enrolled",
        "tunnel open",
        "Intent applied",
    ])
}

/// Online through `add`, `switch` and `retire`, with 20 s certificates: the
/// agent learns each bundle in `Welcome`, renews from the new CA right after
/// `switch`, and never fails to reconnect; an intent declared after every
/// step is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_agent_follows_a_ca_rotation_without_a_failed_reconnect() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let w = World::start_with_hub("e2e-carot", Vec::new(), &["--cert-lifetime", "20s"])
        .await
        .expect("starting hub-sim and the agent");
    let hub = w.hub.admin().clone();
    let deliver = |replicas: u32| {
        let w = &w;
        let hub = hub.clone();
        async move {
            e2e::apply(&hub, &w.cluster, &w.app_manifest("rot", "0.1.0", replicas))
                .await
                .unwrap();
            w.at_hub(
                "ApplicationInstance",
                "rot",
                &format!("v{replicas} applied"),
                STEP,
                |o| o["version"] == replicas && o["last_outcome"] == "applied",
            )
            .await;
        }
    };
    deliver(1).await;
    let started = Instant::now();

    assert!(rotate(&w, "add").contains("stage: added"));
    wait_log(&w, "Hub CA bundle updated from Welcome", 1).await;
    deliver(2).await;

    assert!(rotate(&w, "switch").contains("stage: switched"));
    wait_log(&w, "Hub CA bundle updated from Welcome", 2).await;
    wait_log(&w, "no longer issues from", 1).await;
    // Nobody is left on the old CA: retiring cuts no one off.
    let view = eventually("no cluster on the old CA", STEP, || async {
        let v = hub
            .get("/v1/ca/rotation")
            .await
            .map_err(|e| e.to_string())?;
        if v["clusters_on_old_ca"]
            .as_array()
            .is_some_and(|a| a.is_empty())
        {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(view["stage"], "switched");
    deliver(3).await;

    assert!(rotate(&w, "retire").contains("stage: single"));
    wait_log(&w, "Hub CA bundle updated from Welcome", 3).await;
    deliver(4).await;
    let view = hub.get("/v1/ca/rotation").await.unwrap();
    assert_eq!(view["bundle_sha256"].as_array().map(Vec::len), Some(1));

    let agent_log = w.agent_log();
    assert_eq!(
        count_in_log(&agent_log, "Tunnel connection failed"),
        0,
        "{}",
        w.log_tails()
    );
    assert_eq!(
        count_in_log(w.hub.log(), "TLS handshake refused"),
        0,
        "{}",
        w.log_tails()
    );
    // Connected again after the last step.
    w.wait_connected(STEP).await;
    let c = w
        .wait_cluster_condition("Connected", "True", "TunnelConnected", STEP)
        .await;
    assert_eq!(c["status"], "True");
    assert!(w.secret_leaks().is_empty(), "{:?}", w.secret_leaks());
    println!(
        "--- CA rotation timeline (online agent, rotation took {:?}) ---\n{}",
        started.elapsed(),
        timeline(&w)
    );
}

/// Offline through the whole rotation: the agent comes back to a hub whose
/// server certificate it cannot verify. The Cluster says why and what to do,
/// attempts stay at the backoff's pace, and a new join token (pinned to the
/// new CA) brings it back with the intents queued meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offline_through_a_ca_rotation_says_so_and_a_new_token_brings_it_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::start_with_hub("e2e-cadark", Vec::new(), &[])
        .await
        .expect("starting hub-sim and the agent");
    let hub = w.hub.admin().clone();
    e2e::apply(&hub, &w.cluster, &w.app_manifest("cadark", "0.1.0", 1))
        .await
        .unwrap();
    w.at_hub("ApplicationInstance", "cadark", "v1 applied", STEP, |o| {
        o["last_outcome"] == "applied"
    })
    .await;

    // The site goes dark; the hub rotates its CA all the way through.
    w.agent.stop(Duration::from_secs(10));
    rotate(&w, "add");
    rotate(&w, "switch");
    let status = rotate(&w, "status");
    let audit = hub.get("/v1/audit?limit=50").await.unwrap();
    assert!(
        status.contains(&w.cluster),
        "{status}\n{audit:#}\n{}",
        w.log_tails()
    );
    rotate(&w, "retire");
    e2e::apply(&hub, &w.cluster, &w.app_manifest("cadark", "0.1.0", 2))
        .await
        .unwrap();

    let refused_before = count_in_log(w.hub.log(), "TLS handshake refused");
    w.agent.restart().await.expect("restarting the agent");
    let c = w
        .wait_cluster_condition("Connected", "False", "HubCaUnknown", STEP)
        .await;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(message.contains("hub-sim token create"), "{message}");
    assert!(message.contains(&w.cluster), "{message}");

    // No tight loop: over this window the attempts follow the jittered
    // backoff (at most 2 s in tests, at least 100 ms).
    let failed_at_start = count_in_log(&w.agent_log(), "Tunnel connection failed");
    let window = Duration::from_secs(15);
    tokio::time::sleep(window).await;
    let attempts = count_in_log(&w.agent_log(), "Tunnel connection failed") - failed_at_start;
    let refused = count_in_log(w.hub.log(), "TLS handshake refused") - refused_before;
    println!(
        "connect attempts in {window:?}: agent {attempts}, hub-side refused handshakes {refused} (since restart)"
    );
    assert!(
        attempts >= 2,
        "the agent stopped retrying\n{}",
        w.log_tails()
    );
    assert!(
        attempts <= 40,
        "{attempts} attempts in {window:?}: not the backoff's pace\n{}",
        w.log_tails()
    );
    assert!(!e2e::hub_connected(&hub, &w.cluster).await.unwrap());

    // The operator's way back: a new join token, which pins the new CA.
    let token = e2e::create_token(&hub, &w.cluster, "e2e-org")
        .await
        .unwrap();
    w.agent
        .settings()
        .join(&token)
        .expect("vworkspace-agent join");
    w.wait_connected(STEP).await;
    w.at_hub("ApplicationInstance", "cadark", "v2 applied", STEP, |o| {
        o["version"] == 2 && o["last_outcome"] == "applied"
    })
    .await;
    w.wait_cluster_condition("Connected", "True", "TunnelConnected", STEP)
        .await;
    assert!(w.secret_leaks().is_empty(), "{:?}", w.secret_leaks());
    println!(
        "--- CA rotation timeline (agent offline through it) ---\n{}",
        timeline(&w)
    );
}
