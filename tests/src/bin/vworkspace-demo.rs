//! `vworkspace-demo`: the whole loop once, on this machine, with the real agent.
//!
//! A local kube-apiserver + etcd (the test harness), our CRDs and the upstream
//! ones, the real kube-controller-manager and Flux (source-controller and
//! helm-controller) with a local Helm repository of test charts, hub-sim and
//! `vworkspace-agent` as separate processes, and a sample application declared
//! at the hub that Helm really installs, then a backup of it that the real
//! Velero server (out of cluster, with its AWS plugin and an S3 store on
//! 127.0.0.1) writes to the bucket. `--with-stand-ins` runs the backup through
//! the Velero test stand-in instead (no Velero build needed). Prints the conditions as they reach the hub and a summary;
//! exits non-zero if the loop does not converge before the deadline.

#![deny(rust_2018_idioms)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vworkspace_e2e::ControlPlane;
use vworkspace_e2e::e2e::procs::{AgentProc, AgentSettings, HubSim, binaries};
use vworkspace_e2e::e2e::{self, Row};
use vworkspace_e2e::standins::{self, StandInConfig};
use vworkspace_e2e::upstream::Upstream;

const CLUSTER: &str = "demo-edge";
const ORG: &str = "demo-org";
const APP_NS: &str = "demo";
const AGENT_NS: &str = "vworkspace-system";
const APP: &str = "hello-web";
const BACKUP: &str = "hello-web-backup-1";

/// vworkspace-demo: the whole vWorkspace loop on this machine, with the real agent.
#[derive(clap::Parser, Debug)]
#[command(
    name = "vworkspace-demo",
    override_usage = "tests/demo [--keep] [--deadline 3m] [--with-stand-ins]"
)]
struct Options {
    /// Leave the control plane, hub-sim and the agent running after the
    /// summary (Ctrl-C stops everything).
    #[arg(long)]
    keep: bool,
    /// Fail if the app is not Ready and the backup not Succeeded this long
    /// after they were declared (e.g. 90s, 5m, 1h30m).
    #[arg(long, value_name = "DUR", default_value = "3m", value_parser = parse_deadline)]
    deadline: Duration,
    /// Run the backup through a TEST STAND-IN that moves the Backup's status
    /// the way the Velero server does, instead of the real Velero server and
    /// its S3 store (and start the other stand-ins: snapshots, VolSync, Argo,
    /// Jobs).
    #[arg(long = "with-stand-ins")]
    stand_ins: bool,
}

fn parse_deadline(s: &str) -> Result<Duration, vworkspace_e2e::duration::DurationError> {
    vworkspace_e2e::duration::parse(s)
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = <Options as clap::Parser>::parse();
    if std::env::var_os("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT").is_none() {
        // kube-apiserver drains for a long time on SIGTERM; the demo's
        // throwaway control plane need not wait for it.
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var("KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT", "3s") };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&opts, started) => r,
            _ = tokio::signal::ctrl_c() => {
                println!("\nInterrupted: stopping the agent, hub-sim and the control plane.");
                Ok(Outcome::Interrupted)
            }
        }
    });
    // Everything is stopped by now: the futures above own every process.
    rt.shutdown_timeout(Duration::from_secs(5));
    match result? {
        Outcome::Converged | Outcome::Interrupted => Ok(()),
    }
}

enum Outcome {
    Converged,
    Interrupted,
}

/// Seconds since start, for progress lines.
fn at(started: Instant) -> String {
    format!("{:>6.1}s", started.elapsed().as_secs_f64())
}

fn step(started: Instant, n: u32, text: &str) {
    println!("\n[{}] {n}/7 {text}", at(started));
}

async fn run(opts: &Options, started: Instant) -> anyhow::Result<Outcome> {
    println!(
        "vWorkspace demo: hub-sim ⇄ vworkspace-agent ⇄ kube-apiserver ⇄ Flux ⇄ Helm, all on 127.0.0.1"
    );
    let pending = tokio::task::spawn_blocking(vworkspace_e2e::assets::pending_builds).await?;
    if !pending.is_empty() {
        println!(
            "\nFirst run on this machine: building from Go modules, once (about 25-35 minutes \
             on 2 cores; later runs start in seconds):"
        );
        for p in &pending {
            println!("  - {p}");
        }
    }

    step(
        started,
        1,
        "building vworkspace-agent and hub-sim (release)",
    );
    let bins = tokio::task::spawn_blocking(|| binaries(true)).await??;
    println!("  agent:   {}", bins.agent.display());
    println!("  hub-sim: {}", bins.hub_sim.display());

    step(
        started,
        2,
        "starting a local control plane (kube-apiserver + etcd; built once and cached on a fresh machine)",
    );
    let t = Instant::now();
    let cp = ControlPlane::start()
        .await
        .context("starting the control plane")?;
    if !pending.is_empty() {
        println!("  (built and started in {:.0?})", t.elapsed());
    }
    let client = cp.client()?;
    println!("  API server {}", cp.url());
    println!("  kubeconfig {}", cp.kubeconfig_path().display());

    step(
        started,
        3,
        "installing CRDs and namespaces; starting the real controller manager and Flux",
    );
    e2e::prepare_cluster(&client, AGENT_NS).await?;
    e2e::ensure_namespace(&client, APP_NS, &[vworkspace_e2e::MANAGED_BY]).await?;
    println!("  ours: ApplicationInstance, Operation, Cluster");
    println!(
        "  upstream (pinned): Flux (all source and helm CRDs), Velero, VolumeSnapshot, VolSync, Argo Workflow"
    );
    println!(
        "  namespace {APP_NS} labelled managed-by=vworkspace (the agent writes only there); {AGENT_NS} for the agent"
    );
    let t = Instant::now();
    let upstream = Upstream::start(&cp)
        .await
        .context("starting the controller manager, Flux and the chart repository")?;
    println!(
        "  REAL: kube-controller-manager (garbage collector, namespaces, Jobs), Flux source-controller {} and helm-controller {} ({:.1}s)",
        upstream.flux.bins().source_controller.display(),
        upstream.flux.bins().helm_controller.display(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "  REAL: Helm repository {} and OCI registry {} serving tests/charts (packaged by helm)",
        upstream.charts.http_url(),
        upstream.charts.oci_url()
    );
    println!(
        "  logs of the upstream programs: {}",
        upstream.dir().display()
    );
    let velero = if opts.stand_ins {
        None
    } else {
        let t = Instant::now();
        let dir = upstream.dir().join("velero");
        std::fs::create_dir_all(&dir)?;
        let v = vworkspace_e2e::upstream::velero::Velero::start(&cp, &dir)
            .await
            .context("starting Velero and its S3 store")?;
        println!(
            "  REAL: Velero server {} with velero-plugin-for-aws, BackupStorageLocation default Available on the S3 store {} (gofakes3, bucket {}) ({:.1}s)",
            v.bins().velero.display(),
            v.store().url(),
            vworkspace_e2e::upstream::velero::BUCKET,
            t.elapsed().as_secs_f64()
        );
        println!("  (resource-only backups: no node agent, no volume snapshots)");
        Some(v)
    };
    let _standins = if opts.stand_ins {
        println!(
            "  TEST STAND-INS started (--with-stand-ins): StandInVelero, StandInSnapshotter, StandInVolSync, StandInArgo, StandInKubelet"
        );
        println!(
            "  (they move Backup/Restore, VolumeSnapshot, ReplicationSource and Workflow status the way those controllers do, \
             and Job pods' phase the way a kubelet does; the real ones need pods or CSI volumes, and no kubelet runs here)"
        );
        Some(standins::run_all(client.clone(), StandInConfig::default()))
    } else {
        println!("  no stand-ins (--with-stand-ins runs the backup through one instead of Velero)");
        None
    };

    step(started, 4, "starting hub-sim with a fresh state directory");
    let work = tempfile::Builder::new()
        .prefix("vworkspace-demo-")
        .tempdir()
        .context("creating a work directory")?;
    let state = work.path().join("hub-state");
    let hub_log = work.path().join("hub-sim.log");
    let mut hub = HubSim::start(&bins.hub_sim, &state, &hub_log, &[]).await?;
    println!(
        "  hub-sim serve: enrollment + tunnel https://{} , admin API http://{}",
        hub.tls_addr(),
        hub.admin().addr()
    );
    println!(
        "  state dir {} (admin token in admin-token; log {})",
        state.display(),
        hub_log.display()
    );

    step(started, 5, "enrolling the agent with a join token");
    let token = hub
        .cli(&[
            "token",
            "create",
            "--cluster",
            CLUSTER,
            "--org",
            ORG,
            "--ttl",
            "1h",
        ])?
        .trim()
        .to_owned();
    println!(
        "  hub-sim token create --cluster {CLUSTER} --org {ORG}  → a single-use JWT (a secret: not shown)"
    );
    let settings = AgentSettings {
        bin: bins.agent.clone(),
        kubeconfig: cp.kubeconfig_path().to_path_buf(),
        namespace: AGENT_NS.into(),
        cluster_object: "vworkspace".into(),
        log: work.path().join("agent.log"),
        backoff_max: "5s",
        extra_args: Vec::new(),
    };
    let joined = settings.join(&token)?;
    drop(token);
    for line in joined.lines() {
        println!("  vworkspace-agent join: {line}");
    }
    let mut agent = AgentProc::start(settings).await?;
    println!(
        "  vworkspace-agent run: admin http://{} , log {}",
        agent.admin_addr(),
        agent.settings().log.display()
    );
    wait_until(
        opts.deadline,
        "the agent's tunnel to reach the hub",
        || async {
            e2e::hub_connected(hub.admin(), CLUSTER)
                .await
                .unwrap_or(false)
        },
    )
    .await?;
    println!(
        "[{}]   enrolled (CSR signed, key kept in the cluster) and connected over mutual TLS",
        at(started)
    );

    step(
        started,
        6,
        "declaring an application and a backup at the hub (signed intents)",
    );
    let app_file = work.path().join("app.yaml");
    let op_file = work.path().join("backup.yaml");
    std::fs::write(&app_file, app_yaml(upstream.charts.http_url()))?;
    std::fs::write(&op_file, backup_yaml())?;
    for f in [&app_file, &op_file] {
        let out = hub.cli(&["apply", "-f", path_str(f)?, "--cluster", CLUSTER])?;
        println!("  hub-sim apply -f {}: {}", file_name(f), out.trim());
    }
    let declared = Instant::now();
    println!("  live conditions as they arrive at the hub:");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut ready_at = None;
    let mut succeeded_at = None;
    let deadline = declared + opts.deadline;
    loop {
        let objects = e2e::hub_objects(hub.admin(), CLUSTER)
            .await
            .unwrap_or_default();
        for o in &objects {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["namespace"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?")
            );
            let phase = o["status"]["phase"]
                .as_str()
                .map(|p| format!("phase={p} "))
                .unwrap_or_default();
            let conds = e2e::condition_set(&o["status"]["conditions"])
                .into_iter()
                .collect::<Vec<_>>()
                .join(" ");
            let now = format!(
                "ack={} {phase}{conds}",
                o["last_outcome"].as_str().unwrap_or("pending")
            );
            if seen.get(&key) != Some(&now) {
                println!("  [{}] {key:<44} {now}", at(started));
                seen.insert(key, now);
            }
            let conditions = &o["status"]["conditions"];
            if o["kind"] == "ApplicationInstance"
                && ready_at.is_none()
                && e2e::has_condition(conditions, "Ready", "True", "")
            {
                ready_at = Some(started.elapsed());
            }
            if o["kind"] == "Operation"
                && succeeded_at.is_none()
                && o["status"]["phase"] == "Succeeded"
            {
                succeeded_at = Some(started.elapsed());
            }
        }
        if ready_at.is_some() && succeeded_at.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            print_logs_hint(work.path());
            bail!(
                "the loop did not converge within {:?} of declaring the objects (app Ready: {}, backup Succeeded: {}); logs are in {}",
                opts.deadline,
                ready_at.is_some(),
                succeeded_at.is_some(),
                work.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    step(started, 7, "summary");
    let backup_name = format!("{APP_NS}-{BACKUP}");
    let helm = kube_get(
        &client,
        "helm.toolkit.fluxcd.io",
        "v2",
        "HelmRelease",
        "helmreleases",
        APP_NS,
        APP,
    )
    .await;
    let velero_backup = kube_get(
        &client,
        "velero.io",
        "v1",
        "Backup",
        "backups",
        e2e::VELERO_NAMESPACE,
        &backup_name,
    )
    .await;
    let chart_objects =
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), APP_NS)
            .get_opt(&format!("{APP}-hello"))
            .await
            .ok()
            .flatten()
            .and_then(|c| c.data)
            .unwrap_or_default();
    let objects = e2e::hub_objects(hub.admin(), CLUSTER).await?;
    let mut rows = Vec::new();
    for o in &objects {
        let kind = o["kind"].as_str().unwrap_or("?");
        let mut row = Row::new();
        row.insert(
            "OBJECT",
            format!(
                "{kind} {}/{}",
                o["namespace"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?")
            ),
        );
        row.insert("VERSION", o["version"].to_string());
        row.insert(
            "ACK",
            o["last_outcome"].as_str().unwrap_or("pending").into(),
        );
        let (result, downstream, when) = if kind == "ApplicationInstance" {
            (
                if e2e::has_condition(&o["status"]["conditions"], "Ready", "True", "") {
                    "Ready"
                } else {
                    "not Ready"
                }
                .to_owned(),
                format!(
                    "HelmRelease {APP_NS}/{APP} Ready={}",
                    helm.as_ref()
                        .and_then(|h| h["status"]["conditions"]
                            .as_array()
                            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                            .and_then(|c| c["status"].as_str().map(str::to_owned)))
                        .unwrap_or_else(|| "?".into())
                ),
                ready_at,
            )
        } else {
            (
                o["status"]["phase"].as_str().unwrap_or("?").to_owned(),
                format!(
                    "velero Backup {}/{backup_name} phase={}",
                    e2e::VELERO_NAMESPACE,
                    velero_backup
                        .as_ref()
                        .and_then(|b| b["status"]["phase"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "?".into())
                ),
                succeeded_at,
            )
        };
        row.insert("RESULT", result);
        row.insert("DOWNSTREAM", downstream);
        row.insert(
            "AT",
            when.map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
        );
        rows.push(row);
    }
    print!(
        "\n{}",
        e2e::render_table(
            &["OBJECT", "VERSION", "ACK", "RESULT", "DOWNSTREAM", "AT"],
            &rows
        )
    );
    println!(
        "\nInstalled by Helm (helm-controller): ConfigMap {APP_NS}/{APP}-hello greeting={:?} chartVersion={:?}",
        chart_objects
            .get("greeting")
            .map(String::as_str)
            .unwrap_or("?"),
        chart_objects
            .get("chartVersion")
            .map(String::as_str)
            .unwrap_or("?"),
    );
    match &velero {
        Some(v) => {
            let keys = v
                .store()
                .list(
                    vworkspace_e2e::upstream::velero::BUCKET,
                    &format!("backups/{backup_name}/"),
                )
                .await
                .unwrap_or_else(|e| vec![format!("(listing failed: {e})")]);
            println!(
                "Backed up by Velero: {} items (status.progress.itemsBackedUp), {} objects in s3://{}/backups/{backup_name}/ at {}:",
                velero_backup
                    .as_ref()
                    .map(|b| b["status"]["progress"]["itemsBackedUp"].to_string())
                    .unwrap_or_else(|| "?".into()),
                keys.len(),
                vworkspace_e2e::upstream::velero::BUCKET,
                v.store().url(),
            );
            for k in &keys {
                println!("  {k}");
            }
        }
        None => println!(
            "Backup moved by the Velero TEST STAND-IN (--with-stand-ins): nothing was written to a store."
        ),
    }
    match succeeded_at {
        Some(done) => println!(
            "\nWall time: {:.1}s from start to Ready ({:.1}s to the backup Succeeded); {:.1}s from the apply to both.",
            ready_at.unwrap_or_default().as_secs_f64(),
            done.as_secs_f64(),
            declared.elapsed().as_secs_f64()
        ),
        None => println!(
            "\nWall time: {:.1}s from start to Ready; {:.1}s from the apply.",
            ready_at.unwrap_or_default().as_secs_f64(),
            declared.elapsed().as_secs_f64()
        ),
    }
    println!("\nAs the hub sees it (hub-sim get apps / get operations):");
    print!("{}", indent(&hub.cli(&["get", "apps"])?));
    print!("{}", indent(&hub.cli(&["get", "operations"])?));
    println!("\nAs the agent sees it (vworkspace-agent status):");
    print!("{}", indent(&agent.settings().status()?));

    let explore = format!(
        "  export KUBECONFIG={}\n  kubectl get appinst,op -n {APP_NS}; kubectl get helmreleases -n {APP_NS}; kubectl get backups -n velero; kubectl get clusters\n  export HUB_SIM_STATE_DIR={}   # admin address in admin-addr ({}), token in admin-token\n  {} get apps; {} get operations; {} get clusters",
        cp.kubeconfig_path().display(),
        state.display(),
        hub.admin().addr(),
        bins.hub_sim.display(),
        bins.hub_sim.display(),
        bins.hub_sim.display(),
    );
    if opts.keep {
        println!("\nEverything keeps running (--keep). Explore with:\n{explore}");
        if cp.kubectl().is_none() {
            println!("  (kubectl is not installed here; any kubectl works with that kubeconfig)");
        }
        println!("\nPress Ctrl-C to stop the agent, hub-sim and the control plane.");
        loop {
            if !agent.is_running() {
                bail!("the agent exited; see {}", agent.settings().log.display());
            }
            if !hub.is_running() {
                bail!("hub-sim exited; see {}", hub.log().display());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    println!(
        "\nStopping (run with --keep to leave it running and explore with kubectl and hub-sim get)."
    );
    let t = Instant::now();
    agent.stop(Duration::from_secs(10));
    println!("  agent stopped ({:.1}s)", t.elapsed().as_secs_f64());
    let t = Instant::now();
    hub.stop(Duration::from_secs(10));
    println!("  hub-sim stopped ({:.1}s)", t.elapsed().as_secs_f64());
    let t = Instant::now();
    drop(upstream);
    println!(
        "  controller manager, Flux and registry stopped ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    drop(cp);
    println!(
        "  control plane stopped ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(Outcome::Converged)
}

fn app_yaml(repo_url: &str) -> String {
    format!(
        "# A managed application: the agent turns it into a Flux HelmRepository + HelmRelease,
# and helm-controller installs the chart from the local repository.
apiVersion: apps.vworkspace.io/v1alpha1
kind: ApplicationInstance
metadata:
  name: {APP}
  namespace: {APP_NS}
spec:
  appRef:
    catalogId: hello
  mode: managed
  chart:
    sourceType: helm
    url: {repo_url}
    name: hello
    version: 0.1.0
  release:
    name: {APP}
    namespace: {APP_NS}
  values:
    source: inline
    inline:
      replicaCount: 1
      greeting: hello from the hub
"
    )
}

fn backup_yaml() -> String {
    format!(
        "# A day-2 operation: the agent runs it as a Velero Backup of the namespace.
apiVersion: ops.vworkspace.io/v1alpha1
kind: Operation
metadata:
  name: {BACKUP}
  namespace: {APP_NS}
spec:
  targetRef:
    apiVersion: apps.vworkspace.io/v1alpha1
    kind: ApplicationInstance
    name: {APP}
  type: Backup
  engine: velero
  parameters:
    retention: 72h
"
    )
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn print_logs_hint(dir: &Path) {
    for f in ["agent.log", "hub-sim.log"] {
        let p: PathBuf = dir.join(f);
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        println!("\nlast lines of {}:", p.display());
        for l in tail.into_iter().rev() {
            println!("  {l}");
        }
    }
}

async fn kube_get(
    client: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: &str,
    name: &str,
) -> Option<serde_json::Value> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, version, kind),
        plural,
    );
    kube::Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|o| o.data)
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
