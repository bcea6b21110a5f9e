//! A hostile hub: every rejection case hub-sim's fault switches can send
//! (corrupt signature, expired, foreign cluster, oversized frame, duplicate,
//! replay of an older version) reaches the real agent binary, which refuses
//! it with the right code and leaves the cluster unchanged.

use std::time::Duration;

use serde_json::{Value, json};
use vworkspace_e2e::e2e::{self, world::World};
use vworkspace_e2e::wait::eventually;

const STEP: Duration = Duration::from_secs(60);

/// The hub's record of one intent, once `pred` holds.
async fn intent_when(w: &World, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    e2e::intent_when(w.hub.admin(), &w.cluster, id, what, STEP, pred).await
}

/// (applied version, chart version) of the instance in the cluster.
async fn live(w: &World, name: &str) -> (Option<u64>, String) {
    e2e::instance_versions(&w.client, &w.app_ns, name)
        .await
        .expect("reading the ApplicationInstance")
        .expect("the ApplicationInstance exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_intent_is_refused_and_the_cluster_stays_unchanged() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut w = World::start("e2e-hostile")
        .await
        .expect("starting hub-sim and the agent");
    let (hub, cluster, ns) = (w.hub.admin().clone(), w.cluster.clone(), w.app_ns.clone());

    // A baseline object at version 1.
    let first = e2e::apply(&hub, &cluster, &w.app_manifest("app", "1.0.0", 1))
        .await
        .unwrap();
    intent_when(&w, first["id"].as_str().unwrap(), "applied", |i| {
        i["outcome"] == "applied"
    })
    .await;
    assert_eq!(live(&w, "app").await, (Some(1), "1.0.0".into()));

    // Forged, stale and misaddressed intents: rejected with their code, nothing written.
    let mut rejected = 0;
    for (switch, code) in [
        ("corrupt_signature", "bad_signature"),
        ("expired", "expired"),
        ("foreign_cluster", "foreign_cluster"),
    ] {
        e2e::set_faults(&hub, &cluster, json!({ switch: true }))
            .await
            .unwrap();
        let bad = e2e::apply(&hub, &cluster, &w.app_manifest("app", "6.6.6", 9))
            .await
            .unwrap();
        let evil = e2e::apply(
            &hub,
            &cluster,
            &w.app_manifest(&format!("evil-{code}").replace('_', "-"), "6.6.6", 1),
        )
        .await
        .unwrap();
        for i in [&bad, &evil] {
            let got = intent_when(&w, i["id"].as_str().unwrap(), "rejected", |i| {
                i["outcome"].is_string()
            })
            .await;
            assert_eq!(got["outcome"], "rejected", "{switch}: {got}");
            let msg = got["outcome_message"].as_str().unwrap_or_default();
            assert!(
                msg.starts_with(code),
                "{switch}: expected {code}, got {msg}"
            );
            rejected += 1;
        }
        e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
        assert_eq!(
            live(&w, "app").await,
            (Some(1), "1.0.0".into()),
            "{switch} changed the cluster"
        );
        let evil_name = format!("evil-{code}").replace('_', "-");
        let created = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, &evil_name)
            .await
            .unwrap();
        assert!(created.is_none(), "{switch} created {evil_name}");
    }

    // An oversized frame right after Welcome (so on a new connection): the
    // agent refuses it (frame_too_large) and drops the connection before
    // reading the pending intent; nothing is applied until the hub behaves.
    w.agent.stop(Duration::from_secs(10));
    e2e::set_faults(&hub, &cluster, json!({"oversized_frame": true}))
        .await
        .unwrap();
    let held = e2e::apply(&hub, &cluster, &w.app_manifest("app", "2.0.0", 2))
        .await
        .unwrap();
    w.agent.restart().await.expect("restarting the agent");
    // The agent answers with an Error frame (frame_too_large) and drops the
    // connection; either log shows it, whichever side saw it first.
    let refused = tokio::time::timeout(STEP, async {
        loop {
            let hub_log = std::fs::read_to_string(w.hub.log()).unwrap_or_default();
            let agent_log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
            if hub_log.contains("frame_too_large") || agent_log.contains("oversized frame") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the agent did not refuse the oversized frame\n{}",
        w.log_tails()
    );
    let pending = e2e::intents(&hub, &cluster).await.unwrap();
    let held_row = pending.iter().find(|i| i["id"] == held["id"]).unwrap();
    assert!(held_row["outcome"].is_null(), "{held_row}");
    assert_eq!(
        live(&w, "app").await,
        (Some(1), "1.0.0".into()),
        "oversized frame changed the cluster"
    );
    e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
    intent_when(
        &w,
        held["id"].as_str().unwrap(),
        "applied once the hub behaves",
        |i| i["outcome"] == "applied",
    )
    .await;
    let version_of = |v: &Value| v["version"].as_u64();
    let held_version = version_of(&held);
    eventually("the instance at the held version", STEP, || async {
        let got = live(&w, "app").await;
        (got == (held_version, "2.0.0".into()))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;

    // Duplicate delivery: the same signed intent twice is applied once.
    e2e::set_faults(&hub, &cluster, json!({"duplicate": true}))
        .await
        .unwrap();
    let dup = e2e::apply(&hub, &cluster, &w.app_manifest("app", "3.0.0", 3))
        .await
        .unwrap();
    let dup_id = dup["id"].as_str().unwrap().to_owned();
    intent_when(&w, &dup_id, "applied", |i| i["outcome"] == "applied").await;
    // The second copy is answered as a no-op (the agent's intents metric counts it).
    let metrics = vworkspace_e2e::e2e::admin::AdminClient::new(w.agent.admin_addr(), "");
    eventually(
        "the agent to answer the second copy with noop",
        STEP,
        || async {
            let text = metrics.get("/metrics").await.map_err(|e| e.to_string())?;
            let text = text.as_str().unwrap_or_default().to_owned();
            text.lines()
                .any(|l| {
                    l.starts_with("vworkspace_agent_intents") && l.contains("outcome=\"noop\"")
                })
                .then_some(())
                .ok_or_else(|| "no noop outcome yet".to_string())
        },
    )
    .await;
    e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
    let applied = e2e::applied_per_intent(&w.agent_log());
    assert_eq!(
        applied.get(&dup_id),
        Some(&1),
        "a duplicated intent was applied {:?} times",
        applied.get(&dup_id)
    );

    // Replay: with the agent away, two versions queue up; the hub sends them
    // newest first, so the older one arrives after the newer was applied.
    w.agent.stop(Duration::from_secs(10));
    let older = e2e::apply(&hub, &cluster, &w.app_manifest("app", "4.0.0", 4))
        .await
        .unwrap();
    let newer = e2e::apply(&hub, &cluster, &w.app_manifest("app", "5.0.0", 5))
        .await
        .unwrap();
    e2e::set_faults(&hub, &cluster, json!({"reorder": true}))
        .await
        .unwrap();
    w.agent.restart().await.expect("restarting the agent");
    let newer_row = intent_when(&w, newer["id"].as_str().unwrap(), "applied", |i| {
        i["outcome"].is_string()
    })
    .await;
    assert_eq!(newer_row["outcome"], "applied", "{newer_row}");
    let older_row = intent_when(&w, older["id"].as_str().unwrap(), "settled", |i| {
        i["outcome"].is_string()
    })
    .await;
    // The hub records a replay refusal as a no-op (docs/hub-sim.md).
    assert_eq!(older_row["outcome"], "noop", "{older_row}");
    assert!(
        older_row["outcome_message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("replayed"),
        "{older_row}"
    );
    e2e::set_faults(&hub, &cluster, json!({})).await.unwrap();
    assert_eq!(
        live(&w, "app").await,
        (newer["version"].as_u64(), "5.0.0".into())
    );
    let applied = e2e::applied_per_intent(&w.agent_log());
    assert_eq!(
        applied.get(older["id"].as_str().unwrap()),
        None,
        "the replayed version was applied"
    );

    // The agent also reported every rejection as a Warning event, kept at the
    // hub apart from its own audit log.
    let events = hub.get("/v1/events?limit=1000").await.unwrap().to_string();
    for code in ["bad_signature", "expired", "foreign_cluster"] {
        assert!(
            events.contains(code),
            "no agent event for {code} at the hub"
        );
    }
    println!(
        "hostile hub: {rejected} forged/stale/misaddressed intents rejected, 1 oversized frame refused, 1 duplicate and 1 replay absorbed"
    );
    let leaks = w.secret_leaks();
    assert!(leaks.is_empty(), "{leaks:?}");
}
