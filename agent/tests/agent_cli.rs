//! The `vworkspace-agent` binary's `join` and `status` subcommands against the
//! real API server: flags and environment, output, and that neither stdout nor
//! the JSON logs on stderr carry the token.

mod agent_support;

use std::process::Output;

use agent_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use vworkspace_crds::Cluster;

async fn agent_cmd(cp: &Cluster_, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vworkspace-agent"));
    cmd.args(args)
        .env("KUBECONFIG", vworkspace_e2e::shared().kubeconfig_path())
        .env("VWS_AGENT_NAMESPACE", &cp.agent_ns)
        .env("VWS_AGENT_CLUSTER_OBJECT", &cp.cluster_object)
        .env("VWS_AGENT_LOG_LEVEL", "debug");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().await.expect("running vworkspace-agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_status_work_from_the_binary_and_never_print_the_token() {
    init();
    let _serial = serial().await;
    let cp = control_plane("cli").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(hub_config(dir.path())).await;
    let token = hub
        .hub
        .create_token("edge-cli", "acme", None)
        .unwrap()
        .token;

    // The token comes from the environment, so it is not on the command line either.
    let out = agent_cmd(&cp, &["join"], &[("VWS_AGENT_JOIN_TOKEN", &token)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "join failed: {stdout}\n{stderr}");
    assert!(stdout.contains(&cp.cluster_object) && stdout.contains(hub.hub.public_url()));
    assert!(!stdout.contains(&token) && !stderr.contains(&token));

    let secret = Api::<Secret>::namespaced(cp.client.clone(), &cp.agent_ns)
        .get("vworkspace-join-token")
        .await
        .unwrap();
    let stored = String::from_utf8(secret.data.unwrap()["registrationToken"].0.clone()).unwrap();
    assert_eq!(stored, token);
    let cluster = Api::<Cluster>::all(cp.client.clone())
        .get(&cp.cluster_object)
        .await
        .unwrap();
    assert_eq!(
        cluster.spec.control_plane_endpoint.as_deref(),
        Some(hub.hub.public_url())
    );
    assert_eq!(
        cluster.spec.registration_token_secret_ref.unwrap().name,
        "vworkspace-join-token"
    );

    // Nothing runs the agent here, so `status` shows the object without a connection.
    let out = agent_cmd(&cp, &["status", "--output", "json"], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["cluster_object"], cp.cluster_object.as_str());
    assert_eq!(report["phase"], serde_json::Value::Null);
    assert_eq!(report["hub"], hub.hub.public_url());

    // A garbage token is refused with a message that does not echo it.
    let bad = "eyJhbGciOiJFZERTQSJ9.not-a-token.sig";
    let out = agent_cmd(&cp, &["join", "--token", bad], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token"), "{stderr}");
    assert!(!stderr.contains(bad), "{stderr}");
    hub.shutdown().await;
}
