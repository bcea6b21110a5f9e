//! Shared pieces of the agent's integration tests: the real control plane,
//! an in-process hub-sim, an agent started in-process, captured logs, and
//! waiting on conditions with deadlines (no fixed sleeps).

#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hub_sim::{Config as HubConfig, RunningHub};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vworkspace_agent::process::args::{Dur, IdentityArgs, JoinArgs, KubeArgs};
use vworkspace_agent::{Agent, Config, ConnState, NamespaceList, Redactor};
use vworkspace_crds::Cluster;

/// Every log line written in this test binary (agent and hub-sim).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct Capture;

impl Write for Capture {
    fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(d);
        Ok(d.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the crypto provider and a global subscriber that captures every
/// log line *without* redaction, so the scan proves the code itself never
/// logs secrets (the redaction layer is a separate safety net).
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        vworkspace_protocol::install_jwt_crypto();
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,kube=info,hyper=info,h2=info,tower=info,rustls=info,tungstenite=info,tokio_tungstenite=info",
        );
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(|| Capture),
            )
            .try_init();
    });
}

/// One test at a time per binary: every agent watches all namespaces.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// Waits until `f` returns `Some`, polling, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control plane, our CRDs, and a fresh agent namespace.
pub struct Cluster_ {
    pub client: kube::Client,
    pub agent_ns: String,
    pub cluster_object: String,
}

/// Connects to the shared control plane and installs this project's CRDs.
pub async fn control_plane(prefix: &str) -> Cluster_ {
    let client = vworkspace_e2e::shared_client();
    vworkspace_e2e::crds::install(&client, &vworkspace_crds::manifests::crds())
        .await
        .expect("installing the vWorkspace CRDs");
    let agent_ns =
        vworkspace_e2e::test_namespace_with_labels(&client, &format!("{prefix}-agent"), &[])
            .await
            .expect("creating the agent namespace");
    let cluster_object = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
    Cluster_ {
        client,
        agent_ns,
        cluster_object,
    }
}

/// Hub-sim settings for tests: loopback, short timers.
pub fn hub_config(dir: &std::path::Path) -> HubConfig {
    let mut c = HubConfig::ephemeral(dir);
    c.ping_interval = Duration::from_secs(2);
    c.idle_timeout = Duration::from_secs(10);
    c.shutdown_retry_after = Duration::from_secs(2);
    c
}

/// Starts hub-sim in-process.
pub async fn start_hub(cfg: HubConfig) -> RunningHub {
    hub_sim::start(cfg).await.expect("starting hub-sim")
}

/// Agent configuration for tests.
pub fn agent_config(cp: &Cluster_, identity: &str) -> Config {
    Config {
        namespace: cp.agent_ns.clone(),
        cluster_object: cp.cluster_object.clone(),
        credentials_secret: "vworkspace-agent-credentials".into(),
        hub_endpoint: None,
        allowed_namespaces: NamespaceList::default(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        ready_grace: Duration::from_secs(1),
        lease_name: "vworkspace-agent".into(),
        lease_duration: Duration::from_secs(4),
        lease_renew: Duration::from_millis(500),
        identity: identity.into(),
        controllers: false,
        controller: vworkspace_agent::controllers::Config::default(),
    }
}

/// A running agent.
pub struct RunningAgent {
    pub admin: std::net::SocketAddr,
    pub state: watch::Receiver<ConnState>,
    pub leader: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), vworkspace_agent::RunError>>,
}

impl RunningAgent {
    /// Graceful stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    /// Abrupt stop: the task is aborted mid-flight, like a killed process.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits for a tunnel state.
    pub async fn wait_state(&mut self, want: ConnState, timeout: Duration) {
        let ok = tokio::time::timeout(timeout, async {
            self.state.wait_for(|s| *s == want).await.is_ok()
        })
        .await
        .unwrap_or(false);
        assert!(
            ok,
            "agent did not reach {want:?} within {timeout:?} (now {:?})",
            *self.state.borrow()
        );
    }

    /// GET on the admin server; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The value of one metric line (exact label set).
    pub async fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Starts an agent in-process.
pub async fn start_agent(client: &kube::Client, cfg: Config) -> RunningAgent {
    let agent = Agent::build(cfg, client.clone(), Redactor::new())
        .await
        .expect("building the agent");
    let admin = agent.admin_addr();
    let state = agent.state();
    let leader = agent.leader();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    RunningAgent {
        admin,
        state,
        leader,
        shutdown,
        task,
    }
}

/// Runs `vworkspace-agent join` against the control plane.
pub async fn join(cp: &Cluster_, token: &str) -> String {
    vworkspace_agent::runtime::cli::join(
        cp.client.clone(),
        JoinArgs {
            kube: KubeArgs::default(),
            identity: IdentityArgs {
                namespace: cp.agent_ns.clone(),
                cluster_object: cp.cluster_object.clone(),
                credentials_secret: "vworkspace-agent-credentials".into(),
            },
            token: token.to_owned(),
            token_secret: "vworkspace-join-token".into(),
            wait: Dur(Duration::ZERO),
        },
    )
    .await
    .expect("join")
}

/// The phase of the Cluster object.
pub async fn cluster_phase(cp: &Cluster_) -> Option<String> {
    Api::<Cluster>::all(cp.client.clone())
        .get_opt(&cp.cluster_object)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status)
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_owned())
}

/// Every value of every Secret in the agent namespace (decoded).
pub async fn secret_values(cp: &Cluster_) -> Vec<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    let mut out = Vec::new();
    for s in secrets.list(&Default::default()).await.unwrap().items {
        let name = s.metadata.name.clone().unwrap_or_default();
        for (k, v) in s.data.unwrap_or_default() {
            if let Ok(text) = String::from_utf8(v.0) {
                out.push((format!("{name}/{k}"), text));
            }
        }
    }
    out
}

/// Minimal HTTP/1.1 GET.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An ApplicationInstance manifest for `hub-sim apply` (placeholder mode).
pub fn app_manifest(ns: &str, name: &str, catalog: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"appRef": {"catalogId": catalog}, "mode": "placeholder"},
    })
}

/// One agent end-to-end test, set up the way almost every one starts:
/// serialised with the other agent tests of its binary, its own agent
/// namespace and Cluster object, an in-process hub, and a join token for
/// `cluster` already stored by `vworkspace-agent join`.
pub struct Joined {
    /// Held for the whole test.
    pub serial: tokio::sync::MutexGuard<'static, ()>,
    /// The control plane.
    pub cp: Cluster_,
    /// The hub's state directory; removed when the test ends.
    pub dir: tempfile::TempDir,
    /// The hub.
    pub hub: RunningHub,
    /// The join token.
    pub token: String,
}

/// Sets up a [`Joined`] test: `prefix` names the namespaces, `cluster` the
/// hub's cluster.
pub async fn joined(prefix: &str, cluster: &str) -> Joined {
    init();
    let serial = serial().await;
    let cp = control_plane(prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(hub_config(dir.path())).await;
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token).await;
    Joined {
        serial,
        cp,
        dir,
        hub,
        token,
    }
}
