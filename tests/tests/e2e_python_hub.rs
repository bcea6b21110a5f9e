//! The real agent binary against a hub built from the Python library
//! (`python -m vworkspace_hub.example`, installed in `.venv` by `tests/run`),
//! on the real kube-apiserver with Flux stood in for:
//!
//! 1. the agent enrolls, receives an apply, an update and a delete, refuses
//!    hostile intents (forged signature, expired, foreign cluster, replayed
//!    version) with their codes, and streams statuses back;
//! 2. two Python hub processes share one PostgreSQL behind a switchable
//!    forwarder: intents declared through one reach the agent on the other,
//!    and the agent moves between them with nothing lost or applied twice.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vworkspace_e2e::e2e::admin::AdminClient;
use vworkspace_e2e::e2e::procs::{AgentProc, AgentSettings, binaries, free_port};
use vworkspace_e2e::e2e::pyhub::{Forwarder, PgServer, PyHub};
use vworkspace_e2e::e2e::{self, prepare_cluster};
use vworkspace_e2e::standins::{self, StandInConfig};
use vworkspace_e2e::wait::eventually;

const STEP: Duration = Duration::from_secs(60);
const HUB_FLAGS: &[&str] = &[
    "--heartbeat",
    "2",
    "--idle-timeout",
    "10",
    "--retry-after",
    "1",
    "--poll-interval",
    "1",
];

fn tails(agent_log: &Path, hub_logs: &[&Path]) -> String {
    let mut out = format!(
        "--- agent log:\n{}",
        std::fs::read_to_string(agent_log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for log in hub_logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!(
            "\n--- {}:\n{}",
            log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        ));
    }
    out
}

/// The hub's record of intent `id`, once `pred` holds.
async fn intent_when(
    admin: &AdminClient,
    cluster: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    e2e::intent_when(admin, cluster, id, what, STEP, pred).await
}

async fn hub_cond(
    admin: &AdminClient,
    cluster: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    eventually(&format!("{name} at the hub: {what}"), STEP, || async {
        let o = e2e::hub_object(admin, cluster, "ApplicationInstance", name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not declared")?;
        if pred(&o) { Ok(o) } else { Err(o.to_string()) }
    })
    .await
}

/// (applied version, chart version) of an instance in the cluster, None if absent.
async fn live(client: &kube::Client, ns: &str, name: &str) -> Option<(Option<u64>, String)> {
    e2e::instance_versions(client, ns, name)
        .await
        .expect("reading the ApplicationInstance")
}

fn leaks(token: &str, logs: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(token) {
            out.push(format!("{} contains the join token", log.display()));
        }
        if text.contains("PRIVATE KEY") {
            out.push(format!("{} contains a private key", log.display()));
        }
    }
    out
}

/// Log lines (agent JSON lines, hub text lines) that mention `needle`.
fn excerpt(log: &Path, needle: &str, max: usize) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .take(max)
        .map(|l| format!("    {}", l.chars().take(400).collect::<String>()))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Setup {
    client: kube::Client,
    agent_settings: AgentSettings,
    app_ns: String,
    cluster: String,
    dir: tempfile::TempDir,
    standins: tokio::task::JoinHandle<()>,
    /// The HTTP Helm repository of the real Flux beside the control plane.
    repo: String,
}

async fn setup(prefix: &str) -> Setup {
    let bins = tokio::task::spawn_blocking(|| binaries(false))
        .await
        .unwrap()
        .expect("building the agent");
    let cp = vworkspace_e2e::try_shared().expect("control plane");
    let client = cp.client().expect("control plane client");
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let agent_ns = format!("{prefix}-agent-{suffix}");
    prepare_cluster(&client, &agent_ns)
        .await
        .expect("preparing the cluster");
    let app_ns = vworkspace_e2e::test_namespace(&client, prefix)
        .await
        .unwrap();
    let upstream = tokio::task::spawn_blocking(vworkspace_e2e::upstream::try_shared)
        .await
        .unwrap()
        .expect("the controller manager, Flux and the chart repository");
    let repo = upstream.charts.http_url().to_string();
    let standins = standins::run_all(client.clone(), StandInConfig::default());
    let dir = tempfile::Builder::new()
        .prefix(&format!("vws-{prefix}-"))
        .tempdir()
        .unwrap();
    let cluster = format!("{prefix}-{suffix}");
    let agent_settings = AgentSettings {
        bin: bins.agent.clone(),
        kubeconfig: cp.kubeconfig_path().to_path_buf(),
        namespace: agent_ns,
        cluster_object: cluster.clone(),
        log: dir.path().join("agent.log"),
        backoff_max: "2s",
        extra_args: Vec::new(),
    };
    Setup {
        client,
        agent_settings,
        app_ns,
        cluster,
        dir,
        standins,
        repo,
    }
}

async fn wait_connected(admin: &AdminClient, cluster: &str, what: &str) {
    eventually(what, Duration::from_secs(90), || async {
        e2e::hub_connected(admin, cluster)
            .await
            .map_err(|e| e.to_string())?
            .then_some(())
            .ok_or_else(|| "not connected".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_enrolls_with_the_python_hub_and_follows_its_intents() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = setup("e2e-pyhub").await;
    let (client, ns, cluster) = (s.client.clone(), s.app_ns.clone(), s.cluster.clone());
    let hub_log = s.dir.path().join("pyhub.log");
    let hub = PyHub::start(
        &s.dir.path().join("hub-state"),
        &hub_log,
        free_port().unwrap(),
        None,
        HUB_FLAGS,
    )
    .await
    .expect("starting the Python hub");
    let admin = hub.admin().clone();
    let agent_log = s.agent_settings.log.clone();
    let logs = || tails(&agent_log, &[&hub_log]);

    // Enrollment: token from the Python hub, `vworkspace-agent join`, then the tunnel.
    let token = e2e::create_token(&admin, &cluster, "e2e-org")
        .await
        .unwrap();
    let t0 = Instant::now();
    let out = s
        .agent_settings
        .join(&token)
        .unwrap_or_else(|e| panic!("join: {e}\n{}", logs()));
    let join_ms = t0.elapsed().as_millis();
    assert!(!out.contains(&token), "join printed the join token");
    let mut agent = AgentProc::start(s.agent_settings.clone())
        .await
        .expect("agent");
    let t1 = Instant::now();
    wait_connected(&admin, &cluster, "the agent's tunnel to the Python hub").await;
    // `run` enrolls (key, CSR, POST /v1/enroll) and then opens the tunnel.
    let connect_ms = t1.elapsed().as_millis();

    // Apply: the instance appears at version 1; its Ready status streams back to the hub.
    let t2 = Instant::now();
    let first = e2e::apply(
        &admin,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "app", "0.1.0", 1),
    )
    .await
    .unwrap();
    intent_when(
        &admin,
        &cluster,
        first["id"].as_str().unwrap(),
        "applied",
        |i| i["outcome"] == "applied",
    )
    .await;
    let apply_ack_ms = t2.elapsed().as_millis();
    assert_eq!(
        live(&client, &ns, "app").await,
        Some((Some(1), "0.1.0".into()))
    );
    hub_cond(
        &admin,
        &cluster,
        "app",
        "Ready from the agent's status stream",
        |o| {
            e2e::has_condition(
                &o["status"]["conditions"],
                "Ready",
                "True",
                "HelmReleaseReady",
            )
        },
    )
    .await;
    let ready_ms = t2.elapsed().as_millis();

    // Update: version 2 with the new chart.
    let second = e2e::apply(
        &admin,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "app", "0.2.0", 2),
    )
    .await
    .unwrap();
    intent_when(
        &admin,
        &cluster,
        second["id"].as_str().unwrap(),
        "applied",
        |i| i["outcome"] == "applied",
    )
    .await;
    eventually("the update in the cluster", STEP, || async {
        let got = live(&client, &ns, "app").await;
        (got == Some((Some(2), "0.2.0".into())))
            .then_some(())
            .ok_or(format!("{got:?}"))
    })
    .await;

    // Hostile intents: each refused with its code, the cluster unchanged.
    let hostile = |mode: &'static str, name: String, chart: &'static str| {
        let admin = admin.clone();
        let (cluster, ns, repo) = (cluster.clone(), ns.clone(), s.repo.clone());
        async move {
            admin
                .post(
                    &format!("/v1/clusters/{cluster}/hostile"),
                    &json!({"mode": mode, "manifest": e2e::app_manifest(&repo, &ns, &name, chart, 9)}),
                )
                .await
                .unwrap()
        }
    };
    let mut refused = Vec::new();
    for (mode, code) in [
        ("forged", "bad_signature"),
        ("expired", "expired"),
        ("foreign", "foreign_cluster"),
    ] {
        for name in ["app".to_string(), format!("evil-{mode}")] {
            let i = hostile(mode, name.clone(), "6.6.6").await;
            let got = intent_when(
                &admin,
                &cluster,
                i["id"].as_str().unwrap(),
                "settled",
                |i| i["outcome"].is_string(),
            )
            .await;
            assert_eq!(got["outcome"], "rejected", "{mode}: {got}");
            let msg = got["outcome_message"].as_str().unwrap_or_default();
            assert!(msg.starts_with(code), "{mode}: expected {code}, got {msg}");
            assert!(
                live(&client, &ns, &format!("evil-{mode}")).await.is_none(),
                "{mode} created an object"
            );
            refused.push(code);
        }
    }
    // A replayed (older) version under a new id: the agent answers replayed, the hub records a no-op.
    let replay = hostile("replay", "app".into(), "6.6.6").await;
    let got = intent_when(
        &admin,
        &cluster,
        replay["id"].as_str().unwrap(),
        "settled",
        |i| i["outcome"].is_string(),
    )
    .await;
    assert_eq!(got["outcome"], "noop", "{got}");
    assert!(
        got["outcome_message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("replayed"),
        "{got}"
    );
    assert_eq!(
        live(&client, &ns, "app").await,
        Some((Some(2), "0.2.0".into())),
        "a hostile intent changed the cluster"
    );
    // The agent reported the refusals as Warning events, audited at the hub.
    let audit = admin.get("/v1/audit?limit=1000").await.unwrap().to_string();
    for code in ["bad_signature", "expired", "foreign_cluster"] {
        assert!(audit.contains(code), "no agent event for {code} at the hub");
    }

    // Delete: explicit intent, the instance goes away, the hub hears it.
    let del = e2e::delete(&admin, &cluster, "ApplicationInstance", &ns, "app")
        .await
        .unwrap();
    intent_when(
        &admin,
        &cluster,
        del["id"].as_str().unwrap(),
        "applied",
        |i| i["outcome"] == "applied",
    )
    .await;
    eventually("the instance gone from the cluster", STEP, || async {
        match live(&client, &ns, "app").await {
            None => Ok(()),
            Some(v) => Err(format!("{v:?}")),
        }
    })
    .await;
    let applied = e2e::applied_per_intent(&agent_log);
    for i in [&first, &second, &del] {
        assert_eq!(applied.get(i["id"].as_str().unwrap()), Some(&1), "{i}");
    }
    let leaked = leaks(&token, &[&agent_log, &hub_log]);
    assert!(leaked.is_empty(), "{leaked:?}");

    println!(
        "python hub: join (token stored) {join_ms} ms, agent start to enrolled + tunnel up {connect_ms} ms, apply acked {apply_ack_ms} ms, Ready at hub {ready_ms} ms; refused {} hostile intents ({refused:?}) + 1 replay",
        refused.len()
    );
    let first_id = first["id"].as_str().unwrap();
    println!("--- agent view (enrollment, first intent):");
    println!("{}", excerpt(&agent_log, "nroll", 4));
    println!("{}", excerpt(&agent_log, first_id, 4));
    println!("--- Python hub view (enrollment, first intent):");
    println!("{}", excerpt(&hub_log, "enrolled", 2));
    println!("{}", excerpt(&hub_log, "tunnel open", 1));
    println!("{}", excerpt(&hub_log, first_id, 4));
    agent.stop(Duration::from_secs(10));
    drop(hub);
    s.standins.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_moves_between_two_python_hubs_sharing_postgres() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = setup("e2e-pyhub-pg").await;
    let (client, ns, cluster) = (s.client.clone(), s.app_ns.clone(), s.cluster.clone());
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .expect("starting PostgreSQL");
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let lb = Forwarder::start(port_a).await.unwrap();
    let public = format!("https://{}", lb.addr());
    let mut flags: Vec<&str> = HUB_FLAGS.to_vec();
    flags.extend(["--public-url", &public]);
    let (log_a, log_b) = (
        s.dir.path().join("pyhub-a.log"),
        s.dir.path().join("pyhub-b.log"),
    );
    let mut a = PyHub::start(
        &s.dir.path().join("a"),
        &log_a,
        port_a,
        Some(pg.conninfo()),
        &flags,
    )
    .await
    .expect("hub A");
    let b = PyHub::start(
        &s.dir.path().join("b"),
        &log_b,
        port_b,
        Some(pg.conninfo()),
        &flags,
    )
    .await
    .expect("hub B");
    let (admin_a, admin_b) = (a.admin().clone(), b.admin().clone());
    let agent_log = s.agent_settings.log.clone();
    let logs = || tails(&agent_log, &[&log_a, &log_b]);

    let token = e2e::create_token(&admin_b, &cluster, "e2e-org")
        .await
        .unwrap();
    s.agent_settings
        .join(&token)
        .unwrap_or_else(|e| panic!("join: {e}\n{}", logs()));
    let mut agent = AgentProc::start(s.agent_settings.clone())
        .await
        .expect("agent");
    wait_connected(&admin_a, &cluster, "the agent on hub A").await;

    // Declared through B, delivered by A (LISTEN/NOTIFY over the shared database).
    let one = e2e::apply(
        &admin_b,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "app", "1.0.0", 1),
    )
    .await
    .unwrap();
    intent_when(
        &admin_a,
        &cluster,
        one["id"].as_str().unwrap(),
        "applied via A",
        |i| i["outcome"] == "applied",
    )
    .await;
    assert!(
        std::fs::read_to_string(&log_a)
            .unwrap_or_default()
            .contains(&format!(
                "intent sent cluster={cluster} intent={}",
                one["id"].as_str().unwrap()
            )),
        "hub A did not deliver the intent declared through B\n{}",
        logs()
    );

    // The balancer moves the agent to B; an intent declared meanwhile through A is not lost.
    lb.switch(port_b);
    let two = e2e::apply(
        &admin_a,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "app", "2.0.0", 2),
    )
    .await
    .unwrap();
    let other = e2e::apply(
        &admin_a,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "other", "1.0.0", 1),
    )
    .await
    .unwrap();
    for i in [&two, &other] {
        intent_when(
            &admin_b,
            &cluster,
            i["id"].as_str().unwrap(),
            "applied via B",
            |i| i["outcome"] == "applied",
        )
        .await;
    }
    let b_log = std::fs::read_to_string(&log_b).unwrap_or_default();
    assert!(
        b_log.contains(&format!("tunnel open cluster={cluster}")),
        "the agent never reached hub B\n{}",
        logs()
    );
    wait_connected(&admin_a, &cluster, "the agent on hub B (seen through A)").await;

    // Back to A after A restarts (graceful: goodbye with retry_after), once more.
    lb.switch(port_a);
    a.stop(Duration::from_secs(10));
    let mut flags_a: Vec<&str> = HUB_FLAGS.to_vec();
    flags_a.extend(["--public-url", &public]);
    a = PyHub::start(
        &s.dir.path().join("a"),
        &log_a,
        port_a,
        Some(pg.conninfo()),
        &flags_a,
    )
    .await
    .expect("hub A again");
    let three = e2e::apply(
        &admin_b,
        &cluster,
        &e2e::app_manifest(&s.repo, &ns, "app", "3.0.0", 3),
    )
    .await
    .unwrap();
    intent_when(
        a.admin(),
        &cluster,
        three["id"].as_str().unwrap(),
        "applied",
        |i| i["outcome"] == "applied",
    )
    .await;

    // Nothing lost, nothing applied twice, statuses at the hub match the cluster.
    let report = eventually("hub and cluster agree", STEP, || async {
        let r = e2e::delivery_report(&client, a.admin(), &cluster, &agent_log)
            .await
            .map_err(|e| e.to_string())?;
        if r.problems.is_empty() {
            Ok(r)
        } else {
            Err(format!("{:?}", r.problems))
        }
    })
    .await;
    assert_eq!(
        (report.sent, report.lost, report.duplicated),
        (4, 0, 0),
        "{report:?}"
    );
    assert_eq!(
        live(&client, &ns, "app").await,
        Some((Some(3), "3.0.0".into()))
    );
    let applied = e2e::applied_per_intent(&agent_log);
    for i in [&one, &two, &other, &three] {
        assert_eq!(applied.get(i["id"].as_str().unwrap()), Some(&1), "{i}");
    }
    println!(
        "two Python hubs on one PostgreSQL: {} intents sent, {} lost, {} applied twice; the agent went A -> B -> A",
        report.sent, report.lost, report.duplicated
    );
    agent.stop(Duration::from_secs(10));
    drop(a);
    drop(b);
    drop(lb);
    drop(pg);
    s.standins.abort();
}
