//! hub-sim as a real process: the CLI against a running `hub-sim serve`, and
//! SIGKILL in the middle of delivery followed by a restart on the same state.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use vworkspace_protocol::{
    Condition, Frame, IntentOutcome, ObjectKind, ObjectRef, RenewCert, Status,
};

const BIN: &str = env!("CARGO_BIN_EXE_hub-sim");

struct Proc {
    child: Child,
    tls_addr: std::net::SocketAddr,
    admin: hub_sim::admin_client::AdminClient,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_hub(dir: &Path) -> Proc {
    for f in ["admin-addr", "hub-url"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("HUB_SIM_STATE_DIR", dir)
        .env("HUB_SIM_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("hub-sim binary starts");
    eventually("hub-sim writes its addresses", || async {
        dir.join("admin-addr").exists() && dir.join("hub-url").exists()
    })
    .await;
    let admin_addr = std::fs::read_to_string(dir.join("admin-addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let url = std::fs::read_to_string(dir.join("hub-url")).unwrap();
    let tls_addr = url.trim().trim_start_matches("https://").parse().unwrap();
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    Proc {
        child,
        tls_addr,
        admin: hub_sim::admin_client::AdminClient::new(admin_addr, token.trim()),
    }
}

/// Runs a CLI subcommand against the state dir; returns stdout.
fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("HUB_SIM_STATE_DIR", dir)
        .env_remove("HUB_SIM_ADMIN")
        .env_remove("HUB_SIM_ADMIN_TOKEN")
        .output()
        .expect("hub-sim CLI runs");
    assert!(
        out.status.success(),
        "hub-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn acked_count(p: &Proc) -> usize {
    p.admin
        .get("/v1/intents?cluster=edge-1")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| !i["acked_at"].is_null())
        .count()
}

#[tokio::test]
async fn cli_and_kill_restart_lose_and_duplicate_nothing_acked() {
    init();
    let dir = tempfile::tempdir().unwrap();
    // A state dir hub-sim creates itself (so its mode is hub-sim's choice).
    let state_buf = dir.path().join("hub");
    let state = state_buf.as_path();
    let p1 = spawn_hub(state).await;

    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin token must be private");
        let dir_mode = std::fs::metadata(state).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700, "state dir must be private");
        let db_mode = std::fs::metadata(state.join("hub.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(db_mode & 0o777, 0o600, "database holds private keys");
    }
    let token = cli(
        state,
        &[
            "token",
            "create",
            "--cluster",
            "edge-1",
            "--org",
            "acme",
            "--ttl",
            "10m",
        ],
    );
    let token = token.trim();
    assert_eq!(
        token.split('.').count(),
        3,
        "token create prints only the JWT"
    );
    let ca = std::fs::read_to_string(state.join("ca.pem")).unwrap();
    let creds = enroll(p1.tls_addr, &ca, token).await.expect("enrolls");

    // Five objects in one multi-document YAML file.
    let mut yaml = String::new();
    for i in 0..5 {
        yaml.push_str(&format!(
            "---\napiVersion: apps.vworkspace.io/v1alpha1\nkind: ApplicationInstance\nmetadata:\n  name: x{i}\n  namespace: team\nspec:\n  appRef: {{catalogId: nextcloud}}\n  mode: placeholder\n"
        ));
    }
    let file = state.join("apps.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = cli(
        state,
        &["apply", "-f", file.to_str().unwrap(), "--cluster", "edge-1"],
    );
    assert_eq!(out.lines().count(), 5, "{out}");

    let mut agent = TestAgent::connect(p1.tls_addr, &creds, vec![]).await;
    let mut received = vec![];
    for _ in 0..5 {
        received.push(agent.recv_intent().await);
    }
    let names: Vec<_> = received
        .iter()
        .map(|(_, _, p)| p.object.name.clone())
        .collect();
    assert_eq!(names, ["x0", "x1", "x2", "x3", "x4"]);
    for (seq, _, p) in &received[..3] {
        agent.ack(*seq, p, IntentOutcome::Applied).await;
    }
    agent
        .send(Frame::Status(Status {
            object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", "x0"),
            generation: 1,
            observed_generation: Some(1),
            version: Some(1),
            phase: None,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Placeholder".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: None,
            }],
            outputs: Default::default(),
            hash: "s1".into(),
            deleted: false,
        }))
        .await;
    eventually("three acks durable", || async {
        acked_count(&p1).await == 3
    })
    .await;
    eventually("status durable", || async {
        cli(state, &["get", "apps", "-o", "json"]).contains("Placeholder")
    })
    .await;

    // Crash: SIGKILL, no goodbye, no flush beyond what was committed.
    drop(p1);
    assert!(agent.try_recv().await.is_err());

    let p2 = spawn_hub(state).await;
    // The agent reports nothing applied: the hub's own record of the acks
    // must keep x0..x2 from coming back.
    let mut agent = TestAgent::connect(p2.tls_addr, &creds, vec![]).await;
    let (s3, _, p3) = agent.recv_intent().await;
    let (s4, _, p4) = agent.recv_intent().await;
    assert_eq!(
        (p3.object.name.as_str(), p4.object.name.as_str()),
        ("x3", "x4")
    );
    // Barrier: the hub sends every pending intent before it answers a later
    // frame, so a CertIssued here proves nothing else was queued.
    let (csr, _) = new_csr();
    agent
        .send(Frame::RenewCert(RenewCert { csr_pem: csr }))
        .await;
    match agent.recv().await.body {
        Frame::CertIssued(_) => {}
        other => panic!("an acked intent was redelivered or something else queued: {other:?}"),
    }
    agent.ack(s3, &p3, IntentOutcome::Applied).await;
    agent.ack(s4, &p4, IntentOutcome::Applied).await;
    eventually("all five acked", || async { acked_count(&p2).await == 5 }).await;

    // Statuses survived; the table shows conditions.
    let table = cli(state, &["get", "apps"]);
    assert!(table.contains("Ready=True(Placeholder)"), "{table}");
    let clusters = cli(state, &["get", "clusters"]);
    assert!(
        clusters.lines().nth(1).unwrap().contains("edge-1"),
        "{clusters}"
    );
    assert!(
        clusters.contains("yes"),
        "connected cluster shown: {clusters}"
    );

    // delete, operations, keys, faults through the CLI.
    let out = cli(
        state,
        &["delete", "appinst", "team/x0", "--cluster", "edge-1"],
    );
    assert!(out.contains("version 2"), "{out}");
    let (sd, _, pd) = agent.recv_intent().await;
    assert!(matches!(
        pd.action,
        vworkspace_protocol::IntentAction::Delete
    ));
    agent.ack(sd, &pd, IntentOutcome::Applied).await;
    let op = state.join("op.yaml");
    std::fs::write(
        &op,
        "apiVersion: ops.vworkspace.io/v1alpha1\nkind: Operation\nmetadata:\n  name: backup-1\n  namespace: team\n  annotations:\n    hub.vworkspace.io/cluster: edge-1\nspec:\n  targetRef: {name: x1}\n  type: Backup\n  engine: velero\n",
    )
    .unwrap();
    cli(state, &["apply", "-f", op.to_str().unwrap()]);
    let (so, _, po) = agent.recv_intent().await;
    assert_eq!(po.object.kind, ObjectKind::Operation);
    agent.ack(so, &po, IntentOutcome::Applied).await;
    let ops = cli(state, &["get", "operations"]);
    assert!(ops.contains("backup-1") && ops.contains("PHASE"), "{ops}");
    let faults = cli(state, &["faults", "edge-1", r#"{"delay_ms": 1}"#]);
    assert!(faults.contains("delay_ms"), "{faults}");
    cli(state, &["faults", "edge-1", "{}"]);

    let rotated = cli(state, &["rotate-keys"]);
    assert!(rotated.contains("new intent-signing key"), "{rotated}");
    match agent.recv().await.body {
        Frame::Goodbye(_) => {}
        other => panic!("expected goodbye after rotation, got {other:?}"),
    }
    let keys = cli(state, &["get", "keys"]);
    assert_eq!(keys.lines().count(), 3, "{keys}");

    // Graceful stop: Goodbye with retry_after.
    let mut agent = TestAgent::connect(p2.tls_addr, &creds, vec![]).await;
    unsafe {
        libc::kill(p2.child.id() as i32, libc::SIGTERM);
    }
    match agent.recv().await.body {
        Frame::Goodbye(g) => assert_eq!(g.retry_after_secs, Some(5)),
        other => panic!("expected goodbye on SIGTERM, got {other:?}"),
    }

    // A revoked cluster, through the CLI, against a fresh process.
    drop(p2);
    let p3 = spawn_hub(state).await;
    let out = cli(state, &["revoke", "edge-1"]);
    assert!(out.contains("revoked"), "{out}");
    assert!(
        TestAgent::open(
            p3.tls_addr,
            &creds.ca_pem,
            Some((&creds.cert_pem, &creds.key_pem))
        )
        .await
        .is_err()
    );
    let audit = cli(state, &["get", "audit"]);
    assert!(audit.contains("cluster.revoke"), "{audit}");
}

#[test]
fn demo_runs_the_whole_loop() {
    let out = Command::new(BIN)
        .arg("demo")
        .env("HUB_SIM_LOG", "warn")
        .output()
        .expect("hub-sim demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Ready=True(HelmReleaseReady)"), "{stdout}");
    assert!(stdout.contains("demo complete"), "{stdout}");
}

#[test]
fn admin_token_on_the_command_line_draws_a_warning_and_the_env_var_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let run = |flag: bool| {
        let mut cmd = Command::new(BIN);
        if flag {
            cmd.args(["--admin-token", "s3cret-token-value"]);
        } else {
            cmd.env("HUB_SIM_ADMIN_TOKEN", "s3cret-token-value");
        }
        // Nothing listens on port 9: the command fails after parsing.
        let out = cmd
            .args(["--admin", "127.0.0.1:9", "get", "clusters"])
            .env("HUB_SIM_STATE_DIR", dir.path())
            .env_remove("HUB_SIM_LOG")
            .output()
            .expect("hub-sim runs");
        String::from_utf8(out.stderr).unwrap()
    };
    let with_flag = run(true);
    assert!(
        with_flag.contains("visible to every user in the process list"),
        "{with_flag}"
    );
    assert!(
        !with_flag.contains("s3cret-token-value"),
        "the warning echoes the token"
    );
    let with_env = run(false);
    assert!(!with_env.contains("process list"), "{with_env}");
}
