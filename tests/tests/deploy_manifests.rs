//! The committed plain manifests and hub-sim's manifests against the real
//! kube-apiserver, installed the way docs/operations.md says (kubectl).

use std::time::Duration;

use kube::api::Api;
use vworkspace_e2e::deploy;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The committed plain manifests install with the commands docs/operations.md gives.
#[test]
fn committed_plain_manifests_install_with_kubectl() {
    init();
    let cp = vworkspace_e2e::shared();
    let kubectl = || {
        cp.kubectl()
            .expect("kubectl is built with the control plane (see tests/README.md)")
    };
    let run = |mut cmd: std::process::Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let chart = deploy::chart_dir();
    let mut cmd = kubectl();
    cmd.args(["apply", "--server-side", "-f"])
        .arg(chart.join("crds"));
    run(
        cmd,
        "kubectl apply --server-side -f deploy/chart/vworkspace-agent/crds",
    );
    let mut cmd = kubectl();
    cmd.args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/applicationinstances.apps.vworkspace.io",
        "crd/operations.ops.vworkspace.io",
        "crd/clusters.ops.vworkspace.io",
    ]);
    run(cmd, "kubectl wait for the CRDs");
    let mut cmd = kubectl();
    cmd.args(["apply", "--server-side", "-f"])
        .arg(deploy::plain_manifest_path());
    let out = run(
        cmd,
        "kubectl apply --server-side -f deploy/manifests/vworkspace-agent.yaml",
    );
    for expected in [
        "namespace/vworkspace-system",
        "serviceaccount/vworkspace-agent",
        "clusterrole.rbac.authorization.k8s.io/vworkspace-agent-gated",
        "role.rbac.authorization.k8s.io/vworkspace-agent",
        "deployment.apps/vworkspace-agent",
        "cluster.ops.vworkspace.io/vworkspace",
        "validatingadmissionpolicy.admissionregistration.k8s.io/applicationinstances.apps.vworkspace.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/applicationinstances.apps.vworkspace.io",
        "clusterrole.rbac.authorization.k8s.io/vworkspace-agent-velero",
    ] {
        assert!(out.contains(expected), "{expected} not in:\n{out}");
    }
    // Rendered without a cluster, the default `velero.rbac: auto` binds
    // nothing in `velero`: the bundle installs where Velero is absent.
    assert!(
        !out.contains("rolebinding.rbac.authorization.k8s.io/vworkspace-agent-velero"),
        "{out}"
    );
    let mut cmd = kubectl();
    cmd.args([
        "get",
        "deployment",
        "-n",
        "vworkspace-system",
        "vworkspace-agent",
        "-o",
        "jsonpath={.spec.template.spec.serviceAccountName}",
    ]);
    assert_eq!(run(cmd, "kubectl get deployment"), "vworkspace-agent");

    // Gating a namespace without Helm, as docs/operations.md says.
    let team = format!("team-{:08x}", rand::random::<u32>());
    let as_agent = "--as=system:serviceaccount:vworkspace-system:vworkspace-agent";
    let can_create_jobs = |ns: &str| {
        let mut cmd = kubectl();
        cmd.args(["auth", "can-i", as_agent, "create", "jobs.batch", "-n", ns]);
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_string()
    };
    let mut cmd = kubectl();
    cmd.args(["create", "namespace", &team]);
    run(cmd, "kubectl create namespace");
    let mut cmd = kubectl();
    cmd.args(["label", "namespace", &team, "managed-by=vworkspace"]);
    run(cmd, "kubectl label namespace");
    assert_eq!(can_create_jobs(&team), "no", "before the RoleBinding");
    let mut cmd = kubectl();
    cmd.args([
        "create",
        "rolebinding",
        "vworkspace-agent",
        "-n",
        &team,
        "--clusterrole=vworkspace-agent-gated",
        "--serviceaccount=vworkspace-system:vworkspace-agent",
    ]);
    run(cmd, "kubectl create rolebinding");
    let mut cmd = kubectl();
    cmd.args([
        "-n",
        "vworkspace-system",
        "set",
        "env",
        "deployment/vworkspace-agent",
        &format!("VWS_AGENT_ALLOWED_NAMESPACES={team}"),
    ]);
    run(cmd, "kubectl set env");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while can_create_jobs(&team) != "yes" {
        assert!(
            std::time::Instant::now() < deadline,
            "the RoleBinding never took effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(can_create_jobs("default"), "no");

    // Velero installed (its CRDs and namespace): the agent's rights there with
    // one RoleBinding, as docs/operations.md says.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let admin = cp.client().unwrap();
            vworkspace_e2e::crds::install_upstream_crds(&admin).await
        })
        .unwrap_or_else(|e| panic!("installing the upstream CRDs (Velero's among them): {e}"));
    let can_create_backups = || {
        let mut cmd = kubectl();
        cmd.args([
            "auth",
            "can-i",
            as_agent,
            "create",
            "backups.velero.io",
            "-n",
            "velero",
        ]);
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_string()
    };
    let mut cmd = kubectl();
    cmd.args(["create", "namespace", "velero"]);
    run(cmd, "kubectl create namespace velero");
    assert_eq!(can_create_backups(), "no", "before the RoleBinding");
    let mut cmd = kubectl();
    cmd.args([
        "create",
        "rolebinding",
        "vworkspace-agent-velero",
        "-n",
        "velero",
        "--clusterrole=vworkspace-agent-velero",
        "--serviceaccount=vworkspace-system:vworkspace-agent",
    ]);
    run(cmd, "kubectl create rolebinding in velero");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while can_create_backups() != "yes" {
        assert!(
            std::time::Instant::now() < deadline,
            "the Velero RoleBinding never took effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// deploy/hub-sim/hub-sim.yaml is accepted by the real API server.
#[tokio::test]
async fn hub_sim_manifests_are_accepted_by_the_api_server() {
    init();
    let admin = vworkspace_e2e::shared_client();
    let path = deploy::deploy_dir().join("hub-sim/hub-sim.yaml");
    let docs = deploy::documents(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
    deploy::apply(&admin, &docs, "deploy-rbac-test")
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
    let deploy: k8s_openapi::api::apps::v1::Deployment = Api::namespaced(admin, "vworkspace-hub")
        .get("hub-sim")
        .await
        .unwrap();
    let pod = deploy.spec.template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
}
