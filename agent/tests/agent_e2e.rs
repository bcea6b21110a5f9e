//! End to end against a real kube-apiserver + etcd and an in-process hub-sim:
//! join token → Connected, intents → objects + acks, rejections, restart of
//! the agent and of the hub, and a scan of every captured log line for
//! secrets.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use hub_sim::faults::Faults;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use vworkspace_agent::ConnState;
use vworkspace_agent::process::args::{IdentityArgs, KubeArgs, OutputFormat, StatusArgs};
use vworkspace_crds::ApplicationInstance;
use vworkspace_crds::well_known::annotations::APPLIED_INTENT_VERSION;

const CONNECT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(30);

fn applied_version(ai: &ApplicationInstance) -> Option<u64> {
    ai.metadata
        .annotations
        .as_ref()?
        .get(APPLIED_INTENT_VERSION)?
        .parse()
        .ok()
}

/// Waits until the hub recorded an outcome for the intent `id`; returns (outcome, message).
async fn outcome(hub: &hub_sim::RunningHub, cluster: &str, id: &str) -> (String, String) {
    eventually(STEP, &format!("an ack for intent {id}"), || async {
        hub.hub
            .store()
            .intents(Some(cluster), 100_000)
            .ok()?
            .into_iter()
            .find(|i| i.id == id)
            .and_then(|i| {
                i.outcome
                    .map(|o| (o, i.outcome_message.unwrap_or_default()))
            })
    })
    .await
}

async fn get_ai(client: &kube::Client, ns: &str, name: &str) -> Option<ApplicationInstance> {
    Api::<ApplicationInstance>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("reading an ApplicationInstance")
}

async fn wait_ai_version(
    client: &kube::Client,
    ns: &str,
    name: &str,
    v: u64,
) -> ApplicationInstance {
    eventually(STEP, &format!("{ns}/{name} at version {v}"), || async {
        get_ai(client, ns, name)
            .await
            .filter(|ai| applied_version(ai) == Some(v))
    })
    .await
}

/// Sets a Ready condition the way a controller would (its own field manager).
async fn set_ready(client: &kube::Client, ns: &str, name: &str, reason: &str) {
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": reason, "message": "test controller",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    });
    api.patch_status(
        name,
        &PatchParams::apply("test-controller").force(),
        &Patch::Apply(body),
    )
    .await
    .expect("patching status");
}

/// Waits until the hub holds a status for the object whose conditions mention `needle`.
async fn wait_hub_status(hub: &hub_sim::RunningHub, cluster: &str, name: &str, needle: &str) {
    eventually(
        STEP,
        &format!("hub status of {name} containing {needle}"),
        || async {
            let objs = hub
                .hub
                .objects(Some(cluster), Some("ApplicationInstance"))
                .ok()?;
            objs.into_iter()
                .find(|o| o.object.name == name)
                .and_then(|o| o.status)
                .filter(|s| s.conditions.to_string().contains(needle))
        },
    )
    .await;
}

/// Fails if any captured log line contains a join token, a private key or a Secret value.
async fn assert_no_secrets_logged(cp: &Cluster_, tokens: &[&str]) {
    let logs = captured_logs();
    assert!(!logs.is_empty(), "no logs were captured");
    for t in tokens {
        assert!(!logs.contains(t), "a join token appears in the logs");
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key appears in the logs"
    );
    for (what, value) in secret_values(cp).await {
        // Identity fields (cluster id, org, URLs) are identifiers, logged on purpose.
        let identity = ["cluster-id", "org", "tunnel-url", "control-plane-base-url"]
            .iter()
            .any(|k| what.ends_with(&format!("/{k}")));
        if identity {
            continue;
        }
        for line in value.lines().map(str::trim).filter(|l| l.len() >= 16) {
            assert!(
                !logs.contains(line),
                "Secret value {what} appears in the logs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_token_reaches_connected_and_intents_become_objects_with_acks() {
    init();
    let _serial = serial().await;
    let cp = control_plane("join").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(hub_config(dir.path())).await;
    let cluster = "edge-join";
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;

    let out = join(&cp, &token).await;
    assert!(!out.contains(&token), "join must not print the token");
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    eventually(STEP, "Cluster phase Connected", || async {
        (cluster_phase(&cp).await.as_deref() == Some("Connected")).then_some(())
    })
    .await;

    // The issued id is recorded in the (empty) spec.clusterId, as upstream does.
    let c = Api::<vworkspace_crds::Cluster>::all(cp.client.clone())
        .get(&cp.cluster_object)
        .await
        .unwrap();
    assert_eq!(c.spec.cluster_id.as_deref(), Some(cluster));
    assert_eq!(c.status.unwrap().cluster_id.as_deref(), Some(cluster));

    // The credentials Secret is owned by the Cluster and holds the identity.
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    let creds = secrets.get("vworkspace-agent-credentials").await.unwrap();
    let owner = &creds.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(owner.kind, "Cluster");
    assert_eq!(owner.name, cp.cluster_object);
    let data = creds.data.unwrap();
    assert_eq!(
        String::from_utf8(data["cluster-id"].0.clone()).unwrap(),
        cluster
    );
    assert!(
        String::from_utf8(data["tls.key"].0.clone())
            .unwrap()
            .contains("PRIVATE KEY")
    );

    // `status` shows connection, identity, certificate expiry and last contact.
    let report = vworkspace_agent::runtime::cli::status(
        cp.client.clone(),
        &StatusArgs {
            kube: KubeArgs::default(),
            identity: IdentityArgs {
                namespace: cp.agent_ns.clone(),
                cluster_object: cp.cluster_object.clone(),
                credentials_secret: "vworkspace-agent-credentials".into(),
            },
            output: OutputFormat::Text,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.phase.as_deref(), Some("Connected"));
    assert_eq!(report.cluster_id.as_deref(), Some(cluster));
    assert_eq!(report.org.as_deref(), Some("acme"));
    assert!(report.certificate_not_after.is_some());
    assert!(report.last_contact.is_some());
    let text = vworkspace_agent::runtime::cli::render(&report, OutputFormat::Text);
    assert!(text.contains("Connected") && !text.contains("PRIVATE"));

    // An intent becomes an ApplicationInstance in a gated namespace, and is acked.
    let ns = vworkspace_e2e::test_namespace(&cp.client, "apps")
        .await
        .unwrap();
    let i1 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "nc", "nextcloud"))
        .unwrap();
    let ai = wait_ai_version(&cp.client, &ns, "nc", i1.version).await;
    assert_eq!(ai.spec.app_ref.catalog_id, "nextcloud");
    let labels = ai.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.vworkspace.io/cluster-id"], cluster);
    assert_eq!(outcome(&hub, cluster, &i1.id).await.0, "applied");

    // Status flows back to the hub.
    set_ready(&cp.client, &ns, "nc", "Placeholder").await;
    wait_hub_status(&hub, cluster, "nc", "Placeholder").await;

    // An update, then a delete.
    let i2 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "nc", "nextcloud-29"))
        .unwrap();
    let ai = wait_ai_version(&cp.client, &ns, "nc", i2.version).await;
    assert_eq!(ai.spec.app_ref.catalog_id, "nextcloud-29");
    assert_eq!(outcome(&hub, cluster, &i2.id).await.0, "applied");
    let i3 = hub
        .hub
        .delete(cluster, "ApplicationInstance", &ns, "nc")
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &i3.id).await.0, "applied");
    eventually(STEP, "nc deleted", || async {
        get_ai(&cp.client, &ns, "nc").await.is_none().then_some(())
    })
    .await;

    // Probes and metrics.
    assert_eq!(agent.admin_get("/healthz").await.0, 200);
    assert_eq!(agent.admin_get("/readyz").await.0, 200);
    assert_eq!(
        agent.metric("vworkspace_agent_connection_state").await,
        Some(1.0)
    );
    assert_eq!(
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"applied\",reason=\"\"}")
            .await,
        Some(3.0)
    );
    assert!(
        agent
            .metric("vworkspace_agent_client_certificate_expiry_timestamp_seconds")
            .await
            .unwrap()
            > 1.0e9
    );
    // A client that never finishes its request headers is dropped, not kept.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(agent.admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "the admin server kept a stalled connection open"
        );
    }
    let (_, metrics) = agent.admin_get("/metrics").await;
    assert!(metrics.contains("vworkspace_agent_frames_total{direction=\"in\",type=\"intent\"}"));

    agent.stop().await;
    eventually(STEP, "Cluster phase Disconnected after stop", || async {
        (cluster_phase(&cp).await.as_deref() == Some("Disconnected")).then_some(())
    })
    .await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_expired_foreign_ungated_invalid_and_replayed_intents_are_rejected_and_change_nothing()
 {
    let cluster = "edge-reject";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token,
    } = joined("reject", cluster).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "gated")
        .await
        .unwrap();
    let ungated = vworkspace_e2e::test_namespace_with_labels(&cp.client, "ungated", &[])
        .await
        .unwrap();

    let cases: [(&str, Faults, &str); 3] = [
        (
            "forged",
            Faults {
                corrupt_signature: true,
                ..Faults::default()
            },
            "bad_signature",
        ),
        (
            "stale",
            Faults {
                expired: true,
                ..Faults::default()
            },
            "expired",
        ),
        (
            "foreign",
            Faults {
                foreign_cluster: true,
                ..Faults::default()
            },
            "foreign_cluster",
        ),
    ];
    for (name, faults, code) in cases {
        hub.hub.set_faults(cluster, faults).unwrap();
        let i = hub
            .hub
            .apply(Some(cluster), &app_manifest(&ns, name, "x"))
            .unwrap();
        let (o, msg) = outcome(&hub, cluster, &i.id).await;
        assert_eq!(o, "rejected", "{name}");
        assert!(msg.starts_with(code), "{name}: {msg}");
        assert!(
            get_ai(&cp.client, &ns, name).await.is_none(),
            "{name} must not exist"
        );
    }
    hub.hub.set_faults(cluster, Faults::default()).unwrap();
    // Every rejection is also reported as a Warning event.
    eventually(STEP, "an IntentRejected event at the hub", || async {
        let events = hub.hub.store().agent_events(Some(cluster), 1000).ok()?;
        events
            .iter()
            .any(|e| e.reason == "IntentRejected" && e.message.contains("bad_signature"))
            .then_some(())
    })
    .await;

    // Not gated: the namespace lacks managed-by=vworkspace.
    let i = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ungated, "nope", "x"))
        .unwrap();
    let (o, msg) = outcome(&hub, cluster, &i.id).await;
    assert_eq!(o, "rejected");
    assert!(
        msg.starts_with("forbidden") && msg.contains("NamespaceNotGated"),
        "{msg}"
    );
    assert!(get_ai(&cp.client, &ungated, "nope").await.is_none());

    // Invalid spec: the release must live in the object's namespace.
    let mut bad = app_manifest(&ns, "bad", "x");
    bad["spec"] = serde_json::json!({
        "appRef": {"catalogId": "x"},
        "chart": {"sourceType": "helm", "url": "https://charts.example", "name": "x", "version": "1.0.0"},
        "release": {"name": "x", "namespace": "elsewhere"},
        "values": {"source": "inline"},
    });
    let i = hub.hub.apply(Some(cluster), &bad).unwrap();
    let (o, msg) = outcome(&hub, cluster, &i.id).await;
    assert_eq!(o, "rejected");
    assert!(msg.starts_with("invalid_spec"), "{msg}");
    assert!(get_ai(&cp.client, &ns, "bad").await.is_none());

    for (reason, n) in [
        ("bad_signature", 1.0),
        ("expired", 1.0),
        ("foreign_cluster", 1.0),
        ("forbidden", 1.0),
        ("invalid_spec", 1.0),
    ] {
        let m =
            format!("vworkspace_agent_intents_total{{outcome=\"rejected\",reason=\"{reason}\"}}");
        assert_eq!(agent.metric(&m).await, Some(n), "{m}");
    }

    // Replay: an older version arriving after a newer one is refused.
    let v1 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "x", "one"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &v1.id).await.0, "applied");
    agent.stop().await;
    let v2 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "x", "two"))
        .unwrap();
    let v3 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "x", "three"))
        .unwrap();
    hub.hub
        .set_faults(
            cluster,
            Faults {
                reorder: true,
                ..Faults::default()
            },
        )
        .unwrap();
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(outcome(&hub, cluster, &v3.id).await.0, "applied");
    // The agent rejects with `replayed`; the hub records that as delivered (protocol.md §5).
    let (o, msg) = outcome(&hub, cluster, &v2.id).await;
    assert!(o == "rejected" || o == "noop", "{o}");
    assert!(msg.starts_with("replayed"), "{msg}");
    let ai = get_ai(&cp.client, &ns, "x").await.unwrap();
    assert_eq!(applied_version(&ai), Some(v3.version));
    assert_eq!(ai.spec.app_ref.catalog_id, "three");
    assert_eq!(
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"rejected\",reason=\"replayed\"}")
            .await,
        Some(1.0)
    );

    // An older apply replayed after a newer delete does not bring the object back.
    agent.stop().await;
    let v4 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "x", "four"))
        .unwrap();
    let v5 = hub
        .hub
        .delete(cluster, "ApplicationInstance", &ns, "x")
        .unwrap();
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(outcome(&hub, cluster, &v5.id).await.0, "applied");
    let (o, msg) = outcome(&hub, cluster, &v4.id).await;
    assert!(o == "rejected" || o == "noop", "{o}");
    assert!(msg.starts_with("replayed"), "{msg}");
    assert_eq!(
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"rejected\",reason=\"replayed\"}")
            .await,
        Some(1.0)
    );
    eventually(STEP, "x deleted", || async {
        get_ai(&cp.client, &ns, "x").await.is_none().then_some(())
    })
    .await;
    let tomb =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cp.client.clone(), &cp.agent_ns)
            .get(vworkspace_agent::hub::tombstones::CONFIG_MAP)
            .await
            .unwrap();
    let key = format!("ApplicationInstance.{ns}.x");
    assert!(tomb.data.unwrap()[&key].starts_with(&format!("{} ", v5.version)));
    agent.stop().await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_agent_restarts_without_applying_anything_twice_and_resyncs_status() {
    let cluster = "edge-restart";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token,
    } = joined("restart", cluster).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "apps")
        .await
        .unwrap();

    let a1 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "a", "one"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &a1.id).await.0, "applied");
    let before = get_ai(&cp.client, &ns, "a").await.unwrap();
    assert_eq!(before.metadata.generation, Some(1));

    agent.kill().await;
    // While the agent is down: a status change, a new version of a, a new object b.
    set_ready(&cp.client, &ns, "a", "Placeholder").await;
    let a2 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "a", "two"))
        .unwrap();
    let b1 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "b", "bee"))
        .unwrap();

    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(outcome(&hub, cluster, &a2.id).await.0, "applied");
    assert_eq!(outcome(&hub, cluster, &b1.id).await.0, "applied");
    let a = wait_ai_version(&cp.client, &ns, "a", a2.version).await;
    // One write per version: v1 was not applied again after the restart.
    assert_eq!(a.metadata.generation, Some(2));
    assert_eq!(
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"applied\",reason=\"\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"noop\",reason=\"\"}")
            .await,
        None
    );
    // The status changed while the agent was down reached the hub after the restart.
    wait_hub_status(&hub, cluster, "a", "Placeholder").await;

    // At-least-once delivery: a duplicated intent is applied once, then a noop.
    hub.hub
        .set_faults(
            cluster,
            Faults {
                duplicate: true,
                ..Faults::default()
            },
        )
        .unwrap();
    let c1 = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "c", "sea"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &c1.id).await.0, "applied");
    eventually(STEP, "the duplicate acked as noop", || async {
        agent
            .metric("vworkspace_agent_intents_total{outcome=\"noop\",reason=\"\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(
        get_ai(&cp.client, &ns, "c")
            .await
            .unwrap()
            .metadata
            .generation,
        Some(1)
    );
    hub.hub.set_faults(cluster, Faults::default()).unwrap();

    agent.stop().await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_hub_restart_the_agent_waits_retry_after_reconnects_and_delivery_resumes() {
    init();
    let _serial = serial().await;
    let cp = control_plane("hubrestart").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = hub_config(dir.path());
    let retry_after = cfg.shutdown_retry_after;
    let hub = start_hub(cfg.clone()).await;
    let cluster = "edge-hubrestart";
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "apps")
        .await
        .unwrap();
    let a = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "a", "one"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &a.id).await.0, "applied");

    // Graceful hub restart on the same address and state: agents get Goodbye{retry_after}.
    let addr = hub.tls_addr;
    let stopped = tokio::time::Instant::now();
    hub.shutdown().await;
    agent.wait_state(ConnState::Disconnected, STEP).await;
    let mut cfg2 = cfg.clone();
    cfg2.listen = addr;
    let hub = start_hub(cfg2).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert!(
        stopped.elapsed() >= retry_after,
        "the agent reconnected before Goodbye.retry_after"
    );
    assert!(
        agent
            .metric("vworkspace_agent_reconnects_total")
            .await
            .unwrap()
            >= 1.0
    );

    // Delivery resumes on the new hub process.
    let b = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "b", "two"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &b.id).await.0, "applied");
    wait_ai_version(&cp.client, &ns, "b", b.version).await;

    // An abrupt hub death (no Goodbye) is survived too, with backoff. While
    // the hub is away the agent stays live, and turns unready after the grace.
    hub.abort().await;
    agent.wait_state(ConnState::Disconnected, STEP).await;
    assert_eq!(agent.admin_get("/healthz").await.0, 200);
    eventually(STEP, "/readyz 503 after the grace period", || async {
        (agent.admin_get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(
        agent.metric("vworkspace_agent_connection_state").await,
        Some(-1.0)
    );
    let mut cfg3 = cfg.clone();
    cfg3.listen = addr;
    let hub = start_hub(cfg3).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(agent.admin_get("/readyz").await.0, 200);
    let c = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "c", "three"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &c.id).await.0, "applied");

    // A hub that sends a frame over the size limit is refused by size (an
    // error frame, then a reconnect), never buffered.
    hub.hub
        .set_faults(
            cluster,
            Faults {
                oversized_frame: true,
                ..Faults::default()
            },
        )
        .unwrap();
    let addr = hub.tls_addr;
    hub.shutdown().await;
    let mut cfg4 = cfg.clone();
    cfg4.listen = addr;
    let hub = start_hub(cfg4).await;
    eventually(
        CONNECT,
        "an error frame for the oversized frame",
        || async {
            agent
                .metric("vworkspace_agent_frames_total{direction=\"out\",type=\"error\"}")
                .await
                .filter(|n| *n >= 1.0)
        },
    )
    .await;
    hub.hub.set_faults(cluster, Faults::default()).unwrap();
    let d = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "d", "four"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &d.id).await.0, "applied");

    agent.stop().await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_controllers_running_behind_the_lease_statuses_of_instances_and_operations_reach_the_hub()
 {
    let cluster = "edge-ctrl";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token,
    } = joined("ctrl", cluster).await;
    let mut cfg = agent_config(&cp, "replica-1");
    cfg.controllers = true;
    let mut agent = start_agent(&cp.client, cfg).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "apps")
        .await
        .unwrap();

    // A placeholder instance: the controller marks it Ready, the status stream reports it.
    let i = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "ph", "cluster-ops"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &i.id).await.0, "applied");
    // With the controllers running, the intent's own apply writes the
    // finalizer (the controller then has no write of its own to make).
    let instances = Api::<vworkspace_crds::ApplicationInstance>::namespaced(cp.client.clone(), &ns);
    let ph = instances.get("ph").await.unwrap();
    assert_eq!(
        ph.metadata.finalizers.unwrap_or_default(),
        [vworkspace_crds::well_known::finalizers::APPLICATION_INSTANCE]
    );
    wait_hub_status(&hub, cluster, "ph", "Placeholder").await;

    // An Operation intent becomes an Operation object, and its status reaches the hub.
    let op = serde_json::json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Operation",
        "metadata": {"name": "run-1", "namespace": ns},
        "spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "ph"},
            "type": "RunCommand",
            "engine": "job",
            "parameters": {"image": "busybox:1.36", "command": ["true"]},
        },
    });
    let o = hub.hub.apply(Some(cluster), &op).unwrap();
    assert_eq!(outcome(&hub, cluster, &o.id).await.0, "applied");
    let ops = Api::<vworkspace_crds::Operation>::namespaced(cp.client.clone(), &ns);
    let live = ops.get("run-1").await.unwrap();
    assert_eq!(
        live.metadata.annotations.unwrap()[APPLIED_INTENT_VERSION],
        o.version.to_string()
    );
    eventually(STEP, "a status of the Operation at the hub", || async {
        let objs = hub.hub.objects(Some(cluster), Some("Operation")).ok()?;
        objs.into_iter()
            .find(|v| v.object.name == "run-1")
            .and_then(|v| v.status)
            .filter(|s| s.phase.is_some() || s.conditions.to_string().contains("type"))
    })
    .await;
    assert!(
        agent
            .metric("vworkspace_agent_controllers_reconciles_total")
            .await
            .is_some()
            || agent
                .admin_get("/metrics")
                .await
                .1
                .contains("vworkspace_agent_controllers_"),
        "controller metrics are served on the same /metrics"
    );
    agent.stop().await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}

/// The agent's outgoing frames of one type: (frames, bytes).
async fn sent(agent: &RunningAgent, frame_type: &str) -> (f64, f64) {
    let labels = format!("{{direction=\"out\",type=\"{frame_type}\"}}");
    let frames = agent
        .metric(&format!("vworkspace_agent_frames_total{labels}"))
        .await
        .unwrap_or(0.0);
    let bytes = agent
        .metric(&format!("vworkspace_agent_frame_bytes_total{labels}"))
        .await
        .unwrap_or(0.0);
    (frames, bytes)
}

/// The hub's stored status hash of one object of the cluster.
fn hub_hash(hub: &hub_sim::RunningHub, cluster: &str, name: &str) -> Option<String> {
    hub.hub
        .store()
        .statuses(Some(cluster), None)
        .ok()?
        .into_iter()
        .find(|s| s.name == name)
        .and_then(|s| s.hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_sends_a_bucket_summary_and_only_the_buckets_that_changed() {
    const N: usize = 40;
    let cluster = "edge-digest";
    let Joined {
        serial: _serial,
        cp,
        dir,
        hub,
        token,
    } = joined("digest", cluster).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "digest")
        .await
        .unwrap();
    for i in 0..N {
        hub.hub
            .apply(
                Some(cluster),
                &app_manifest(&ns, &format!("app-{i:02}"), "d"),
            )
            .unwrap();
    }
    eventually(STEP, "every intent acked", || async {
        hub.hub
            .store()
            .pending_intents(cluster, 0, 1)
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    eventually(STEP, "every status at the hub", || async {
        let n = hub.hub.store().statuses(Some(cluster), None).ok()?.len();
        (n > N).then_some(())
    })
    .await;
    // The first connection after the start: a full Hello, then a summary
    // (this hub announces bucketed digests), not a whole inventory.
    assert_eq!(sent(&agent, "inventory_summary").await.0, 1.0);

    // Cut the tunnel; while it is down, change two statuses.
    let hello_before = sent(&agent, "hello").await;
    hub.hub
        .set_faults(
            cluster,
            Faults {
                drop_after_frames: Some(0),
                ..Faults::default()
            },
        )
        .unwrap();
    agent.wait_state(ConnState::Disconnected, STEP).await;
    let api: Api<ApplicationInstance> = Api::namespaced(cp.client.clone(), &ns);
    let old = hub_hash(&hub, cluster, "app-03");
    for name in ["app-03", "app-17"] {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"observedGeneration": 42}})),
        )
        .await
        .unwrap();
    }
    let inv_before = sent(&agent, "inventory").await;
    hub.hub.set_faults(cluster, Faults::default()).unwrap();
    agent.wait_state(ConnState::Connected, CONNECT).await;
    eventually(STEP, "the changed statuses at the hub", || async {
        (hub_hash(&hub, cluster, "app-03") != old).then_some(())
    })
    .await;
    // Summary-mode Hellos (no applied versions), one summary, and an
    // inventory of at most the changed objects' buckets (the Cluster's status
    // may have changed too).
    let hello_after = sent(&agent, "hello").await;
    let hellos = hello_after.0 - hello_before.0;
    assert!(hellos >= 1.0);
    assert!(
        (hello_after.1 - hello_before.1) / hellos < 300.0,
        "a summary-mode hello is small: {hello_after:?} - {hello_before:?}"
    );
    assert_eq!(sent(&agent, "inventory_summary").await.0, 2.0);
    let inv_after = sent(&agent, "inventory").await;
    assert!(inv_after.0 - inv_before.0 <= 1.0, "one bucket inventory");
    // Every object and the Cluster (other tests of this binary share the
    // control plane, so the agent may also hold their objects).
    let stored = hub.hub.store().inventory(cluster).unwrap().unwrap();
    let held: Vec<(String, String)> = stored["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for i in 0..N {
        let name = format!("app-{i:02}");
        assert!(
            held.iter()
                .any(|(k, n)| k == "ApplicationInstance" && *n == name),
            "the hub's inventory lacks {name}: {held:?}"
        );
    }
    assert!(
        held.iter().any(|(k, _)| k == "Cluster"),
        "the hub's inventory lacks the Cluster: {held:?}"
    );

    // A hub without bucketed digests (same address and state): the agent
    // sends the whole inventory, and full Hellos from then on.
    let addr = hub.tls_addr;
    hub.shutdown().await;
    agent.wait_state(ConnState::Disconnected, STEP).await;
    let mut cfg = hub_config(dir.path());
    cfg.listen = addr;
    cfg.digest_buckets = 0;
    let hub = start_hub(cfg).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    eventually(STEP, "a whole inventory", || async {
        let now = sent(&agent, "inventory").await;
        (now.0 > inv_after.0 && now.1 - inv_after.1 > 1000.0).then_some(())
    })
    .await;
    assert_eq!(sent(&agent, "inventory_summary").await.0, 2.0);
    let z = hub
        .hub
        .apply(Some(cluster), &app_manifest(&ns, "z", "d"))
        .unwrap();
    assert_eq!(outcome(&hub, cluster, &z.id).await.0, "applied");

    agent.stop().await;
    assert_no_secrets_logged(&cp, &[&token]).await;
    hub.shutdown().await;
}
