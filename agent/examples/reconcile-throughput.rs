//! Reconcile throughput of the ApplicationInstance controller against a real
//! kube-apiserver + etcd with the real Flux CRDs.
//!
//! 0. Packages the test chart `hello` (tests/charts) and serves it from a
//!    local Helm repository; every instance installs `hello` 0.1.0 from it.
//! 1. Creates N ApplicationInstances (controllers not running yet).
//! 2. Starts the controllers and measures the time until all N HelmReleases
//!    exist and all N statuses are written (pure controller throughput: Flux
//!    is not running yet).
//! 3. Starts the real Flux source-controller and helm-controller and measures
//!    the time until all N instances are Ready=True: N HelmRepositories and
//!    HelmCharts fetched, N Helm installs, N status round trips. On a small
//!    machine Flux dominates this number (helm-controller installs 4 releases
//!    at a time by default); it says how long the agent takes to reflect a
//!    real installation, not how fast the agent alone is.
//!
//! `cargo run --release -p vworkspace-agent --example reconcile-throughput -- [N [CONCURRENCY]]`

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
};
use serde_json::json;
use vworkspace_agent::controllers::{self, Config, Metrics};
use vworkspace_crds::{ApplicationInstance, manifests};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(1000);

    let cp = vworkspace_e2e::ControlPlane::start().await?;
    let client = cp.client()?;
    let dir = tempfile::Builder::new()
        .prefix("vws-reconcile-throughput-")
        .tempdir()?;
    let flux_bins = tokio::task::spawn_blocking(vworkspace_e2e::assets::resolve_flux).await??;
    let charts = vworkspace_e2e::upstream::Charts::start(&flux_bins, dir.path()).await?;
    let repo_url = charts.http_url().to_string();
    vworkspace_e2e::crds::install(
        &client,
        &[
            manifests::application_instance_crd(),
            manifests::operation_crd(),
        ],
    )
    .await?;
    let sets = tokio::task::spawn_blocking(vworkspace_e2e::crds::upstream_crds).await??;
    let mut flux = Vec::new();
    for set in sets {
        flux.extend(
            set.crds()?
                .into_iter()
                .filter(|c| c.spec.group.ends_with("fluxcd.io")),
        );
    }
    vworkspace_e2e::crds::install(&client, &flux).await?;
    let ns = vworkspace_e2e::test_namespace(&client, "bench").await?;

    // 1. Create N instances, 32 requests in flight.
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    let results: Vec<Result<ApplicationInstance, kube::Error>> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let ns = ns.clone();
            let repo_url = repo_url.clone();
            async move {
                let ai: ApplicationInstance = serde_json::from_value(json!({
                    "apiVersion": "apps.vworkspace.io/v1alpha1",
                    "kind": "ApplicationInstance",
                    "metadata": {"name": format!("app-{i:05}"), "namespace": ns},
                    "spec": {
                        "appRef": {"catalogId": "bench"},
                        "chart": {"sourceType": "helm", "url": repo_url, "name": "hello", "version": "0.1.0"},
                        "release": {"name": format!("app-{i:05}"), "namespace": ns},
                        "values": {"source": "inline", "inline": {"greeting": "bench"}},
                    }
                }))
                .expect("valid instance");
                api.create(&PostParams::default(), &ai).await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let create = t0.elapsed();
    println!("created {n} ApplicationInstances in {create:.2?}");

    // 2. Controllers only.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let mut config = Config::default();
    if let Some(c) = std::env::args().nth(2) {
        config.concurrency = c.parse().context("CONCURRENCY must be a number")?;
    }
    let concurrency = config.concurrency;
    let stop = tokio_util::sync::CancellationToken::new();
    let t1 = Instant::now();
    let (gate, gate_watch) = controllers::NamespaceGate::watch(client.clone(), Default::default());
    let gate_watch = tokio::spawn(gate_watch);
    let ctrl = tokio::spawn(controllers::run(
        client.clone(),
        config,
        metrics,
        gate,
        stop.clone(),
    ));
    let hr_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    );
    let hrs = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &hr_ar);
    wait(&format!("{n} HelmReleases"), SHORT, || async {
        Ok(hrs.list_metadata(&ListParams::default()).await?.items.len() >= n)
    })
    .await?;
    let t_hr = t1.elapsed();
    wait("all statuses written", SHORT, || async {
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|a| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.helm_release_ref.is_some())
            })
            .count()
            >= n)
    })
    .await?;
    let t_status = t1.elapsed();
    println!(
        "controllers (concurrency {concurrency}): {n} HelmReleases after {t_hr:.2?} ({:.0}/s), all statuses after {t_status:.2?} ({:.0}/s)",
        n as f64 / t_hr.as_secs_f64(),
        n as f64 / t_status.as_secs_f64()
    );

    // 3. With the real Flux: time to Ready=True everywhere.
    let t2 = Instant::now();
    let flux = vworkspace_e2e::upstream::Flux::start(&cp, dir.path()).await?;
    let t_flux = t2.elapsed();
    let t3 = Instant::now();
    // Generous: a few seconds of Flux work per release on two cores.
    let ready_timeout = SHORT.max(Duration::from_secs(3 * n as u64));
    wait("all Ready=True", ready_timeout, || async {
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|a| {
                a.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count()
            >= n)
    })
    .await?;
    let t_ready = t3.elapsed();
    println!(
        "real Flux (start took {t_flux:.2?}): all {n} Ready=True {t_ready:.2?} after it was up ({:.1}/s)",
        n as f64 / t_ready.as_secs_f64()
    );
    drop(flux);
    drop(charts);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), ctrl).await;
    gate_watch.abort();
    Ok(())
}

/// Deadline of the phases without Flux.
const SHORT: Duration = Duration::from_secs(600);

/// Polls `check` every 200 ms for up to `timeout`.
async fn wait<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, kube::Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
