//! Edge clusters that go dark, with lifetimes short enough that "days" take
//! seconds: hub-sim issues 20 s certificates, the agent process is stopped
//! past their expiry and started again. Real processes (hub-sim, the
//! `vworkspace-agent` binary) against the real kube-apiserver.

use std::time::Duration;

use vworkspace_e2e::e2e::{
    self,
    world::{World, count_in_log},
};

const STEP: Duration = Duration::from_secs(90);

/// The lines of both logs that tell the story of a recovery, in order, for
/// the test output (`--nocapture`).
fn timeline(w: &World) -> String {
    w.timeline(&[
        "recover",
        "expired",
        "Tunnel connected",
        "Tunnel connection failed",
        "tunnel established",
        "cluster enrolled",
        "Enrolled",
        "shutting down",
        "tunnel open",
        "tunnel refused",
        "Intent applied",
        "signing key rotated",
    ])
}

/// Offline past expiry, across an intent-key rotation and retirement, with
/// intents queued meanwhile: the agent recovers its certificate with its key,
/// receives the new key ring in `Welcome` and applies everything, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_past_expiry_and_key_retirement_recovers_and_delivers_in_order() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::start_with_hub(
        "e2e-dark",
        Vec::new(),
        &["--cert-lifetime", "20s", "--recovery-window", "10m"],
    )
    .await
    .expect("starting hub-sim and the agent");
    let hub = w.hub.admin().clone();
    e2e::apply(&hub, &w.cluster, &w.app_manifest("dark", "0.1.0", 1))
        .await
        .unwrap();
    w.at_hub("ApplicationInstance", "dark", "v1 applied", STEP, |o| {
        o["last_outcome"] == "applied"
    })
    .await;
    let old_kid = hub.get("/v1/keys").await.unwrap()["active"]
        .as_str()
        .unwrap()
        .to_owned();

    // The site goes dark.
    w.agent.stop(Duration::from_secs(10));
    let dark_at = std::time::Instant::now();

    // Meanwhile at the hub: rotate the intent key and retire the old one,
    // then queue intents (signed with the new key when they are sent).
    let rotated = hub
        .post("/v1/keys/rotate", &serde_json::json!({}))
        .await
        .unwrap();
    let new_kid = rotated["active"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    hub.post(
        &format!("/v1/keys/{old_kid}/retire"),
        &serde_json::json!({}),
    )
    .await
    .unwrap();
    let mut queued = Vec::new();
    for replicas in 2..=3 {
        queued.push(
            e2e::apply(&hub, &w.cluster, &w.app_manifest("dark", "0.1.0", replicas))
                .await
                .unwrap(),
        );
    }
    queued.push(
        e2e::apply(&hub, &w.cluster, &w.app_manifest("dark-2", "0.1.0", 1))
            .await
            .unwrap(),
    );

    // Longer than the certificate lived: whatever the agent held has expired.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(dark_at.elapsed())).await;
    w.agent.restart().await.expect("restarting the agent");
    w.wait_connected(STEP).await;

    // Each queued intent's own ack (the object's newest outcome would still
    // be v1's, acked before the site went dark).
    for intent in &queued {
        let id = intent["id"].as_str().unwrap();
        e2e::intent_when(&hub, &w.cluster, id, "acked applied", STEP, |i| {
            i["outcome"] == "applied"
        })
        .await;
    }
    let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &w.app_ns, "dark")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2e::applied_version(&ai), Some(3));

    let agent_log = w.agent_log();
    assert_eq!(
        count_in_log(&agent_log, "Client certificate recovered"),
        1,
        "{}",
        w.log_tails()
    );
    assert_eq!(
        count_in_log(w.hub.log(), "certificate recovered"),
        1,
        "{}",
        w.log_tails()
    );
    // No intent was refused for an unknown key: the ring came before them.
    assert_eq!(
        count_in_log(&agent_log, "unknown_key"),
        0,
        "{}",
        w.log_tails()
    );
    let audit = hub.get("/v1/audit?limit=200").await.unwrap().to_string();
    assert!(audit.contains("old_serial="), "{audit}");
    assert!(w.secret_leaks().is_empty(), "{:?}", w.secret_leaks());
    println!("--- recovery timeline ---\n{}", timeline(&w));
}

/// Revoked while offline: recovery is refused, the Cluster says so with the
/// operator's command, and the agent does not ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_while_offline_is_not_recovered_and_says_so() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::start_with_hub(
        "e2e-revoked",
        Vec::new(),
        &["--cert-lifetime", "20s", "--recovery-window", "10m"],
    )
    .await
    .expect("starting hub-sim and the agent");
    w.agent.stop(Duration::from_secs(10));
    let dark_at = std::time::Instant::now();
    w.hub.cli(&["revoke", &w.cluster]).expect("hub-sim revoke");
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(dark_at.elapsed())).await;
    w.agent.restart().await.expect("restarting the agent");

    let c = w
        .wait_cluster_condition("Authenticated", "False", "IdentityRevoked", STEP)
        .await;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(message.contains("hub-sim token create"), "{message}");
    // Long enough for several tunnel backoffs (2 s in tests): one request only.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = w.agent_log();
    assert_eq!(
        count_in_log(&log, "recovering it with the cluster's key"),
        1,
        "{}",
        w.log_tails()
    );
    assert_eq!(count_in_log(w.hub.log(), "certificate recovered"), 0);
}

/// Beyond the recovery window: refused, told, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_recovery_window_is_told_and_not_retried() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::start_with_hub(
        "e2e-window",
        Vec::new(),
        &["--cert-lifetime", "15s", "--recovery-window", "3s"],
    )
    .await
    .expect("starting hub-sim and the agent");
    w.agent.stop(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(25)).await;
    w.agent.restart().await.expect("restarting the agent");

    let c = w
        .wait_cluster_condition("Authenticated", "False", "RecoveryWindowPassed", STEP)
        .await;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(message.contains("hub-sim token create"), "{message}");
    assert!(
        message.contains("within 3s") || message.contains("3s ago"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        count_in_log(&w.agent_log(), "recovering it with the cluster's key"),
        1,
        "{}",
        w.log_tails()
    );
}

/// A hub clock 10 minutes ahead of the cluster's: the Cluster says
/// `ClockSkew=True` with the measured difference, and intents still apply
/// (hub-sim shifts only the `server_time` it reports; see docs/operations.md
/// for what real skew does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_is_reported_on_the_cluster() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let w = World::start_with_hub("e2e-skew", Vec::new(), &["--clock-offset-secs", "600"])
        .await
        .expect("starting hub-sim and the agent");
    let c = w
        .wait_cluster_condition("ClockSkew", "True", "ClockSkewDetected", STEP)
        .await;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("600s behind")
            || message.contains("599s behind")
            || message.contains("601s behind"),
        "{message}"
    );
}

/// A hub clock a day behind the cluster's: `ClockSkew=True` says the cluster
/// is a day ahead, and the tunnel stays up (the certificate's expiry is judged
/// on the hub's clock, so it is not mistaken for expired and recovered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_a_day_ahead_is_reported_and_the_tunnel_stays_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let w = World::start_with_hub(
        "e2e-skew-day",
        Vec::new(),
        &["--clock-offset-secs", "-86400", "--cert-lifetime", "30s"],
    )
    .await
    .expect("starting hub-sim and the agent");
    let c = w
        .wait_cluster_condition("ClockSkew", "True", "ClockSkewDetected", STEP)
        .await;
    let message = c["message"].as_str().unwrap_or_default();
    assert!(
        ["86399s ahead of", "86400s ahead of", "86401s ahead of"]
            .iter()
            .any(|m| message.contains(m)),
        "{message}"
    );
    // Longer than a certificate lives: renewal keeps it connected, nothing is recovered.
    tokio::time::sleep(Duration::from_secs(35)).await;
    w.wait_connected(Duration::from_secs(10)).await;
    assert_eq!(
        count_in_log(&w.agent_log(), "recovering it with the cluster's key"),
        0
    );
}
