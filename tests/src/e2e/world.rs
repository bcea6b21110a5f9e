//! One enrolled cluster for an end-to-end test: the shared control plane with
//! every CRD, the real upstream controllers (controller manager, Flux) and the
//! test charts, the stand-ins for what cannot run here, a hub-sim process and
//! an agent process joined with a fresh token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::procs::{AgentProc, AgentSettings, HubSim, binaries};
use super::{E2eError, hub_connected, prepare_cluster};
use crate::standins::{self, StandInConfig};

/// hub-sim flags for tests: short pings and idle timeout, quick Goodbye retry.
pub const HUB_TEST_FLAGS: &[&str] = &[
    "--ping-interval",
    "2s",
    "--idle-timeout",
    "10s",
    "--retry-after",
    "1s",
];

/// A running loop: control plane, upstream controllers, stand-ins, hub-sim
/// and an enrolled agent.
pub struct World {
    /// Admin client on the caller's runtime.
    pub client: kube::Client,
    /// hub-sim.
    pub hub: HubSim,
    /// The agent.
    pub agent: AgentProc,
    /// Cluster id at the hub.
    pub cluster: String,
    /// A gated namespace for the test's objects.
    pub app_ns: String,
    /// Logs and hub state live here.
    pub dir: tempfile::TempDir,
    /// The real controller manager, Flux and the chart repositories.
    pub upstream: &'static crate::upstream::Upstream,
    join_token: String,
    standins: JoinHandle<()>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("cluster", &self.cluster)
            .field("app_ns", &self.app_ns)
            .finish_non_exhaustive()
    }
}

impl World {
    /// Builds the binaries (dev profile), prepares the shared control plane,
    /// starts hub-sim and enrolls an agent; returns once the hub sees the
    /// tunnel. `prefix` names the cluster and the namespaces.
    pub async fn start(prefix: &str) -> Result<World, E2eError> {
        Self::start_with(prefix, Vec::new()).await
    }

    /// Like [`World::start`], with extra `vworkspace-agent run` flags.
    pub async fn start_with(prefix: &str, agent_args: Vec<String>) -> Result<World, E2eError> {
        Self::start_with_hub(prefix, agent_args, &[]).await
    }

    /// Like [`World::start_with`], with more `hub-sim serve` flags after
    /// [`HUB_TEST_FLAGS`] (e.g. a short `--cert-lifetime`).
    pub async fn start_with_hub(
        prefix: &str,
        agent_args: Vec<String>,
        hub_flags: &[&str],
    ) -> Result<World, E2eError> {
        let bins = tokio::task::spawn_blocking(|| binaries(false))
            .await
            .map_err(|e| {
                super::procs::ProcError::Build(format!("the build thread failed: {e}"))
            })??;
        let cp = crate::try_shared()
            .map_err(|e| super::procs::ProcError::Build(format!("control plane: {e}")))?;
        let client = cp
            .client()
            .map_err(|e| super::procs::ProcError::Build(format!("control plane client: {e}")))?;
        let upstream = tokio::task::spawn_blocking(crate::upstream::try_shared)
            .await
            .map_err(|e| super::procs::ProcError::Build(format!("upstream start: {e}")))?
            .map_err(|e| super::procs::ProcError::Build(format!("upstream controllers: {e}")))?;
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let agent_ns = format!("{prefix}-agent-{suffix}");
        prepare_cluster(&client, &agent_ns).await?;
        let app_ns = crate::test_namespace(&client, prefix).await?;
        let standins = standins::run_all(client.clone(), StandInConfig::default());
        let dir = tempfile::Builder::new()
            .prefix(&format!("vws-{prefix}-"))
            .tempdir()
            .map_err(|source| super::procs::ProcError::Io {
                path: "a temporary directory".into(),
                source,
            })?;
        let hub = HubSim::start(
            &bins.hub_sim,
            &dir.path().join("hub-state"),
            &dir.path().join("hub-sim.log"),
            &[HUB_TEST_FLAGS, hub_flags].concat(),
        )
        .await?;
        let cluster = format!("{prefix}-{suffix}");
        let join_token = super::create_token(hub.admin(), &cluster, "e2e-org").await?;
        let settings = AgentSettings {
            bin: bins.agent.clone(),
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            namespace: agent_ns,
            cluster_object: cluster.clone(),
            log: dir.path().join("agent.log"),
            backoff_max: "2s",
            extra_args: agent_args,
        };
        let out = settings.join(&join_token)?;
        assert!(
            !out.contains(&join_token),
            "vworkspace-agent join printed the join token"
        );
        let agent = AgentProc::start(settings).await?;
        let world = World {
            client,
            hub,
            agent,
            cluster,
            app_ns,
            dir,
            upstream,
            join_token,
            standins,
        };
        world.wait_connected(Duration::from_secs(90)).await;
        Ok(world)
    }

    /// [`super::app_manifest`] of the test chart `hello` from the HTTP
    /// repository, in the world's application namespace.
    pub fn app_manifest(
        &self,
        name: &str,
        chart_version: &str,
        replicas: u32,
    ) -> serde_json::Value {
        super::app_manifest(
            self.upstream.charts.http_url(),
            &self.app_ns,
            name,
            chart_version,
            replicas,
        )
    }

    /// Waits up to `timeout` until the hub's record of `kind/name` satisfies
    /// `pred` and returns it; panics with every log's tail otherwise.
    pub async fn at_hub(
        &self,
        kind: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let what = format!("{kind} {name} at the hub: {what}");
        let found = tokio::time::timeout(
            timeout + Duration::from_secs(5),
            crate::wait::eventually(&what, timeout, || async {
                let o = super::hub_object(self.hub.admin(), &self.cluster, kind, name)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("not declared")?;
                if pred(&o) { Ok(o) } else { Err(o.to_string()) }
            }),
        )
        .await;
        match found {
            Ok(o) => o,
            Err(_) => panic!("{what}: timed out\n{}", self.log_tails()),
        }
    }

    /// A namespaced object of any kind in the cluster, as JSON (`None` when absent).
    pub async fn get_json(
        &self,
        resource: &kube::api::ApiResource,
        ns: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        kube::Api::<kube::api::DynamicObject>::namespaced_with(self.client.clone(), ns, resource)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {ns}/{name}: {e}", resource.kind))
            .map(|o| serde_json::to_value(o).expect("an object serializes"))
    }

    /// The agent's log (every incarnation).
    pub fn agent_log(&self) -> PathBuf {
        self.agent.settings().log.clone()
    }

    /// Waits until the hub lists the cluster as connected; panics with both logs' tails.
    pub async fn wait_connected(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if hub_connected(self.hub.admin(), &self.cluster)
                .await
                .unwrap_or(false)
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the agent did not connect to hub-sim within {timeout:?}\n{}",
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the agent and hub-sim logs, for failure messages.
    pub fn log_tails(&self) -> String {
        let tail = |p: &Path| crate::process::tail(p, 30);
        format!(
            "--- agent log ({}):\n{}\n--- hub-sim log ({}):\n{}\n{}",
            self.agent_log().display(),
            tail(&self.agent_log()),
            self.hub.log().display(),
            tail(self.hub.log()),
            self.upstream.log_tails(15)
        )
    }

    /// Places where the join token or a private key shows up in a log (empty when none).
    pub fn secret_leaks(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        for log in [self.agent_log(), self.hub.log().to_path_buf()] {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&self.join_token) {
                leaks.push(format!("{} contains the join token", log.display()));
            }
            if text.contains("PRIVATE KEY") {
                leaks.push(format!("{} contains a private key", log.display()));
            }
        }
        leaks
    }

    /// The Cluster object's condition of `type_`, as JSON.
    pub async fn cluster_condition(&self, type_: &str) -> Option<serde_json::Value> {
        // Cluster (ops.vworkspace.io/v1alpha1) is cluster-scoped.
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("ops.vworkspace.io", "v1alpha1", "Cluster"),
            "clusters",
        );
        let api = kube::Api::<kube::api::DynamicObject>::all_with(self.client.clone(), &ar);
        let c = api.get_opt(&self.cluster).await.ok()??;
        c.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Waits until the Cluster object's condition `type_` has `status` and
    /// `reason`; panics with both logs' tails after `within`.
    pub async fn wait_cluster_condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        within: Duration,
    ) -> serde_json::Value {
        let what = format!("Cluster condition {type_}={status}/{reason}");
        let found = tokio::time::timeout(
            within + Duration::from_secs(5),
            crate::wait::eventually(&what, within, || async {
                let c = self.cluster_condition(type_).await.ok_or("no condition")?;
                if c["status"] == status && c["reason"] == reason {
                    Ok(c)
                } else {
                    Err(c.to_string())
                }
            }),
        )
        .await;
        match found {
            Ok(c) => c,
            Err(_) => panic!("{what}: timed out\n{}", self.log_tails()),
        }
    }

    /// The lines of the agent's and hub-sim's logs that contain one of
    /// `marks`, agent first, for a test's printed timeline.
    pub fn timeline(&self, marks: &[&str]) -> String {
        let mut out = String::new();
        for (who, path) in [
            ("agent", self.agent_log()),
            ("hub", self.hub.log().to_path_buf()),
        ] {
            for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
                if marks.iter().any(|m| line.contains(m)) {
                    out.push_str(&format!("[{who}] {line}\n"));
                }
            }
        }
        out
    }

    /// Stops the agent and hub-sim gracefully (also done on drop).
    pub fn stop(&mut self) {
        self.agent.stop(Duration::from_secs(10));
        self.hub.stop(Duration::from_secs(10));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
        self.standins.abort();
    }
}

/// How often `needle` occurs in the file at `path` (0 when it cannot be read).
pub fn count_in_log(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}
