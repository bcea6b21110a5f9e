//! The real agent binary under the chart's RBAC: the chart is installed with
//! `helm install`, and the agent runs holding only a token of the chart's
//! ServiceAccount, alone and enrolled with hub-sim.

mod deploy_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::deploy;

use deploy_support::*;

/// A binary of this workspace: `$env_override` if set, else built now with the
/// cargo running the tests (the path comes from cargo's own build messages,
/// so any target directory works).
fn workspace_binary(env_override: &str, package: &str, bin: &str) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env_override) {
        return p.into();
    }
    // Built once per test binary, so every test runs the same executable.
    static BUILT: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(b, _)| b == bin) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = deploy::deploy_dir().parent().unwrap().to_path_buf();
    let out = std::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} build: {e}"));
    assert!(
        out.status.success(),
        "building {bin} failed; fix the build or set {env_override} to a built {bin}"
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"));
    built.push((bin.to_string(), path.clone()));
    path
}

fn agent_binary() -> std::path::PathBuf {
    workspace_binary("VWS_AGENT_BIN", "vworkspace-agent", "vworkspace-agent")
}

/// A kubeconfig file holding only the ServiceAccount token (no client certificate).
fn token_kubeconfig(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let cp = vworkspace_e2e::shared();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n- name: agent\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: agent\ncurrent-context: c\n",
            cp.url(),
            base64::engine::general_purpose::STANDARD.encode(cp.serving_ca_pem()),
            token
        ),
    )
    .unwrap();
    path
}

/// The agent binary running as the chart's ServiceAccount, its log in a file.
struct AgentProc {
    child: tokio::process::Child,
    log_path: std::path::PathBuf,
    admin_port: u16,
}

impl AgentProc {
    /// `allow_list` is the agent's own namespace allow-list
    /// (`VWS_AGENT_ALLOWED_NAMESPACES`; empty: every labelled namespace).
    fn start(i: &Install, dir: &std::path::Path, allow_list: &str) -> Self {
        let bin = agent_binary();
        let kubeconfig = token_kubeconfig(dir, &i.token);
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = tokio::process::Command::new(&bin)
            .arg("run")
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("VWS_AGENT_NAMESPACE", &i.agent_ns)
            .env("VWS_AGENT_CLUSTER_OBJECT", &i.cluster)
            .env("VWS_AGENT_LEASE_NAME", &i.release)
            .env("VWS_AGENT_ALLOWED_NAMESPACES", allow_list)
            .env("VWS_AGENT_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("VWS_AGENT_LOG_FORMAT", "plain")
            .env("VWS_AGENT_LOG_LEVEL", "info")
            .env("VWS_AGENT_VELERO_NAMESPACE", &i.velero)
            .env("VWS_AGENT_BACKOFF_MAX", "2s")
            .env("POD_NAME", "agent-pod-0")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            child,
            log_path,
            admin_port,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("agent is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the agent exits within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "agent exit: {status}\n{}", self.logs());
        self.logs()
    }
}

/// One agent process at a time: every agent watches ApplicationInstances
/// cluster-wide, so two agents of different test installs in the one shared
/// API server would reconcile each other's objects (a real cluster runs one).
static AGENT_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Log lines where the API server refused the agent (403) in one of `ours`
/// (the test's namespaces) or outside any namespace.
/// Refusals in other tests' namespaces are left out: every agent watches
/// ApplicationInstances cluster-wide, and this API server is shared.
fn unexpected_refusals<'a>(log: &'a str, ours: &[&str]) -> Vec<&'a str> {
    log.lines()
        // The API server's wording in a kube error, and the agent's short form
        // of a Status ("Forbidden (403)"); not the protocol's `forbidden` code.
        .filter(|l| l.contains("is forbidden: User") || l.contains("Forbidden (403)"))
        .filter(|l| {
            let named = l
                .split_once(r#"in the namespace ""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(ns, _)| ns);
            named.is_none_or(|ns| ours.contains(&ns))
        })
        .collect()
}

/// The real agent binary, started with only the chart ServiceAccount's token,
/// takes the Lease, reads its join-token Secret, reports the (deliberately
/// unusable) token on the Cluster status, runs its controllers in the gated
/// namespace, is refused by the API server (403) in a labelled namespace
/// that has no RoleBinding even with its own gate open, keeps the token out
/// of its logs, and vacates the Lease on SIGTERM.
#[tokio::test]
async fn agent_binary_runs_with_only_the_service_account_token() {
    let i = install("rbac-run").await;
    let _one_agent = AGENT_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Work for the controllers: a placeholder and a chart in the gated
    // namespace, and the same chart in the namespace that carries the label
    // but has no RoleBinding.
    let managed = |ns: &str| {
        json!({"spec": {
            "appRef": {"catalogId": "nextcloud"},
            "mode": "managed",
            "chart": {"sourceType": "helm", "url": "https://charts.example.com", "name": "nextcloud", "version": "1.0.0"},
            "release": {"name": "web", "namespace": ns},
            "values": {"source": "inline", "inline": {"replicas": 1}},
        }})
    };
    for (ns, name, fields) in [
        (
            &i.gated,
            "placeholder",
            json!({"spec": {"appRef": {"catalogId": "ops"}, "mode": "placeholder"}}),
        ),
        (&i.gated, "web", managed(&i.gated)),
        (&i.ungated, "web", managed(&i.ungated)),
    ] {
        ssa(&i.admin, Some(ns), &AI, name, fields).await.unwrap();
    }
    // The agent's own gate is left open to every labelled namespace (no
    // allow-list), as a misconfigured or compromised agent would be: the API
    // server alone must keep it out of the labelled namespace that has no
    // RoleBinding.
    let agent = AgentProc::start(&i, dir.path(), "");
    let logs = || agent.logs();

    let leases = dynamic(&i.admin, Some(&i.agent_ns), &LEASE);
    vworkspace_e2e::wait::eventually(
        "the agent holds the Lease",
        Duration::from_secs(60),
        || async {
            match leases.get_opt(&i.release).await {
                Ok(Some(l)) if l.data["spec"]["holderIdentity"] == "agent-pod-0" => Ok(()),
                other => Err(format!("lease: {other:?}\nagent log:\n{}", logs())),
            }
        },
    )
    .await;

    let clusters = dynamic(&i.admin, None, &CLUSTER);
    let cluster = vworkspace_e2e::wait::eventually(
        "the agent reports the join token on the Cluster status",
        Duration::from_secs(60),
        || async {
            let c = clusters.get(&i.cluster).await.map_err(|e| e.to_string())?;
            let conds = c.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if conds
                .iter()
                .any(|c| c["type"] == "Authenticated" && c["reason"] == "JoinTokenInvalid")
            {
                Ok(c)
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    c.data["status"],
                    logs()
                ))
            }
        },
    )
    .await;
    assert!(
        !cluster.data.to_string().contains(&i.join_token),
        "the join token leaked into the Cluster object"
    );

    // The controllers run with the same token: status, finalizer and Flux
    // objects in the gated namespace ...
    let ais = dynamic(&i.admin, Some(&i.gated), &AI);
    vworkspace_e2e::wait::eventually(
        "the agent marks the placeholder Ready",
        Duration::from_secs(60),
        || async {
            let ai = ais.get("placeholder").await.map_err(|e| e.to_string())?;
            let conds = ai.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if conds.iter().any(|c| {
                c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Placeholder"
            }) {
                Ok(())
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    ai.data["status"],
                    logs()
                ))
            }
        },
    )
    .await;
    let releases = dynamic(&i.admin, Some(&i.gated), &HELM_RELEASE);
    let hr = vworkspace_e2e::wait::eventually(
        "the agent creates the HelmRelease in the gated namespace",
        Duration::from_secs(60),
        || async {
            releases
                .get_opt("web")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no HelmRelease yet\nagent log:\n{}", logs()))
        },
    )
    .await;
    assert!(
        hr.metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("vworkspace-agent")),
        "the HelmRelease was not written by the agent"
    );
    // Operations on the placeholder: a Velero Backup in Velero's namespace, a
    // Job (and its runner ServiceAccount) in the gated namespace.
    let op_spec = |type_: &str, engine: &str, params: Value| {
        json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "placeholder"},
            "type": type_, "engine": engine, "parameters": params,
        }})
    };
    ssa(
        &i.admin,
        Some(&i.gated),
        &OP,
        "backup",
        op_spec("Backup", "velero", json!({"retention": "72h"})),
    )
    .await
    .unwrap();
    ssa(
        &i.admin,
        Some(&i.gated),
        &OP,
        "cmd",
        op_spec(
            "RunCommand",
            "job",
            json!({"image": "busybox:1.37", "command": ["true"]}),
        ),
    )
    .await
    .unwrap();
    let ops = dynamic(&i.admin, Some(&i.gated), &OP);
    for (op, res, ns) in [("backup", &BACKUP, &i.velero), ("cmd", &JOB, &i.gated)] {
        let op = op.to_string();
        let ops = &ops;
        let (phase, eref) = vworkspace_e2e::wait::eventually(
            &format!("the agent starts Operation {op}"),
            Duration::from_secs(60),
            || {
                let op = op.clone();
                async move {
                    let o = ops.get(&op).await.map_err(|e| e.to_string())?;
                    let st = &o.data["status"];
                    if st["phase"] == "Running" || st["phase"] == "Succeeded" {
                        Ok((st["phase"].clone(), st["engineRef"].clone()))
                    } else {
                        Err(format!("status: {st}\nagent log:\n{}", logs()))
                    }
                }
            },
        )
        .await;
        assert_eq!(eref["kind"], res.kind, "{op}: {phase}");
        assert_eq!(&eref["namespace"], &json!(ns), "{op}");
        let name = eref["name"].as_str().unwrap();
        dynamic(&i.admin, Some(ns), res)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{op}: the agent's {} {ns}/{name}: {e}", res.kind));
    }
    dynamic(&i.admin, Some(&i.gated), &SERVICE_ACCOUNT)
        .get("vworkspace-operation-runner")
        .await
        .expect("the runner ServiceAccount");

    // ... and the API server refusing the same writes where no RoleBinding exists.
    let refused_there = format!("in the namespace \"{}\"", i.ungated);
    vworkspace_e2e::wait::eventually(
        "the API server refuses the agent's Flux objects in the unbound namespace",
        Duration::from_secs(60),
        || async {
            let text = logs();
            if text
                .lines()
                .any(|l| l.contains("forbidden") && l.contains(&refused_there))
            {
                Ok(())
            } else {
                Err(format!("no refusal logged yet\nagent log:\n{text}"))
            }
        },
    )
    .await;
    for res in [&HELM_RELEASE, &HELM_REPOSITORY] {
        let left = dynamic(&i.admin, Some(&i.ungated), res)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            left.items.is_empty(),
            "a {} was written in {}",
            res.kind,
            i.ungated
        );
    }

    // Liveness answers without a hub.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", agent.admin_port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // SIGTERM: the agent vacates the Lease and exits cleanly.
    let log_text = agent.stop().await;
    let lease = leases.get(&i.release).await.unwrap();
    assert!(
        lease.data["spec"]["holderIdentity"].is_null(),
        "not vacated: {}",
        lease.data
    );

    assert!(
        !log_text.contains(&i.join_token),
        "the join token appears in the agent's log"
    );
    assert!(
        !log_text.contains(&i.token),
        "the ServiceAccount token appears in the agent's log"
    );
    // Every refusal is the expected one: nothing the agent needs was refused.
    let refused: Vec<&str> = unexpected_refusals(&log_text, &i.namespaces())
        .into_iter()
        .filter(|l| !l.contains(&refused_there))
        .collect();
    assert!(
        refused.is_empty(),
        "the agent was refused by the API server with the chart's RBAC:\n{}",
        refused.join("\n")
    );

    // The agent left its finalizers; release the objects so no later agent
    // in this API server trips over them.
    for (res, ns, name) in [
        (&OP, &i.gated, "backup"),
        (&OP, &i.gated, "cmd"),
        (&AI, &i.gated, "placeholder"),
        (&AI, &i.gated, "web"),
        (&AI, &i.ungated, "web"),
    ] {
        let api = dynamic(&i.admin, Some(ns), res);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        api.delete(name, &Default::default()).await.unwrap();
    }
}

/// `hub-sim serve` on loopback with a fresh state dir; killed on drop.
struct HubProc {
    _child: tokio::process::Child,
    bin: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl HubProc {
    async fn start(state: &std::path::Path) -> Self {
        let bin = workspace_binary("VWS_HUB_SIM_BIN", "vworkspace-hub-sim", "hub-sim");
        std::fs::create_dir_all(state).unwrap();
        let child = tokio::process::Command::new(&bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("HUB_SIM_STATE_DIR", state)
            .env("HUB_SIM_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        vworkspace_e2e::wait::eventually(
            "hub-sim writes its addresses",
            Duration::from_secs(30),
            || async {
                if state.join("admin-addr").exists() && state.join("hub-url").exists() {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
        Self {
            _child: child,
            bin,
            state: state.to_path_buf(),
        }
    }

    /// Runs a CLI subcommand against this hub; returns stdout.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&self.bin)
            .args(args)
            .env("HUB_SIM_STATE_DIR", &self.state)
            .env_remove("HUB_SIM_ADMIN")
            .env_remove("HUB_SIM_ADMIN_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "hub-sim {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The whole agent path under the chart's RBAC: the agent binary, holding only
/// the ServiceAccount token, enrolls with hub-sim (it creates its credentials
/// Secret by name), opens the tunnel, applies a signed intent in the gated
/// namespace, refuses one for the labelled namespace outside its allow-list,
/// and its status reaches the hub.
#[tokio::test]
async fn agent_binary_enrolls_and_applies_intents_with_only_the_service_account_token() {
    let i = install("rbac-hub").await;
    let _one_agent = AGENT_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub")).await;
    let hub_cluster = format!("edge-{}", &i.cluster[i.cluster.len() - 8..]);
    let token = hub
        .cli(
            &[
                "token",
                "create",
                "--cluster",
                &hub_cluster,
                "--org",
                "acme",
            ],
            None,
        )
        .trim()
        .to_string();
    assert!(token.starts_with("ey"), "hub-sim printed no JWT");
    // The operator replaces the join token (section 3 of docs/operations.md).
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "vworkspace-join-token"},
        "stringData": {"registrationToken": token},
    }))
    .unwrap();
    Api::<Secret>::namespaced(i.admin.clone(), &i.agent_ns)
        .replace("vworkspace-join-token", &PostParams::default(), &secret)
        .await
        .unwrap();

    // Configured as the chart configures it: the allow-list is gatedNamespaces.
    let agent = AgentProc::start(&i, dir.path(), &i.gated);
    let clusters = dynamic(&i.admin, None, &CLUSTER);
    vworkspace_e2e::wait::eventually(
        "the Cluster is Connected",
        Duration::from_secs(90),
        || async {
            let c = clusters.get(&i.cluster).await.map_err(|e| e.to_string())?;
            if c.data["status"]["phase"] == "Connected" {
                Ok(())
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    c.data["status"],
                    agent.logs()
                ))
            }
        },
    )
    .await;
    let creds = Api::<Secret>::namespaced(i.admin.clone(), &i.agent_ns)
        .get("vworkspace-agent-credentials")
        .await
        .expect("enrollment stored the credentials Secret");
    let data = creds.data.unwrap_or_default();
    for key in ["tls.key", "tls.crt", "ca.crt", "signing-keys.json"] {
        assert!(data.contains_key(key), "credentials Secret lacks {key}");
    }

    let manifest = |ns: &str, name: &str| {
        format!(
            "apiVersion: apps.vworkspace.io/v1alpha1\nkind: ApplicationInstance\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  appRef:\n    catalogId: cluster-ops\n  mode: placeholder\n"
        )
    };
    hub.cli(
        &["apply", "-f", "-", "--cluster", &hub_cluster],
        Some(&manifest(&i.gated, "from-hub")),
    );
    hub.cli(
        &["apply", "-f", "-", "--cluster", &hub_cluster],
        Some(&manifest(&i.ungated, "from-hub")),
    );

    // Applied in the gated namespace, then Ready, and the status at the hub.
    let ais = dynamic(&i.admin, Some(&i.gated), &AI);
    vworkspace_e2e::wait::eventually(
        "the intent's object is Ready in the gated namespace",
        Duration::from_secs(60),
        || async {
            let Some(ai) = ais.get_opt("from-hub").await.map_err(|e| e.to_string())? else {
                return Err(format!("not applied yet\nagent log:\n{}", agent.logs()));
            };
            let ready = ai.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("status: {}", ai.data["status"]))
            }
        },
    )
    .await;
    let objects = || {
        let out = hub.cli(
            &["get", "apps", "--cluster", &hub_cluster, "-o", "json"],
            None,
        );
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    };
    vworkspace_e2e::wait::eventually(
        "the hub sees both outcomes and the status",
        Duration::from_secs(60),
        || async {
            let rows = objects();
            let row = |ns: &str| {
                rows.iter()
                    .find(|r| r["namespace"] == ns)
                    .cloned()
                    .unwrap_or_default()
            };
            let (gated, ungated) = (row(&i.gated), row(&i.ungated));
            let ready_at_hub = gated["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let refused = ungated["last_outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("rejected"));
            if gated["last_outcome"] == "applied" && ready_at_hub && refused {
                Ok(())
            } else {
                Err(format!("hub objects: {rows:?}"))
            }
        },
    )
    .await;
    assert!(
        dynamic(&i.admin, Some(&i.ungated), &AI)
            .get_opt("from-hub")
            .await
            .unwrap()
            .is_none(),
        "an intent for a namespace outside the allow-list was applied"
    );

    let log_text = agent.stop().await;
    assert!(
        !log_text.contains(&token),
        "the join token appears in the agent's log"
    );
    let refused = unexpected_refusals(&log_text, &i.namespaces());
    assert!(
        refused.is_empty(),
        "the agent was refused by the API server with the chart's RBAC:\n{}",
        refused.join("\n")
    );
}
