//! Reconcile throughput of the ApplicationInstance controller against a real
//! kube-apiserver + etcd with the real Flux CRDs.
//!
//! 1. Creates N ApplicationInstances (controllers not running yet).
//! 2. Starts the controllers and measures the time until all N HelmReleases
//!    exist and all N statuses are written (pure controller throughput).
//! 3. Starts the `StandInHelmController` and measures the time until all N
//!    instances are Ready=True (controller + stand-in round trips).
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
            async move {
                let ai: ApplicationInstance = serde_json::from_value(json!({
                    "apiVersion": "apps.vworkspace.io/v1alpha1",
                    "kind": "ApplicationInstance",
                    "metadata": {"name": format!("app-{i:05}"), "namespace": ns},
                    "spec": {
                        "appRef": {"catalogId": "bench"},
                        "chart": {"sourceType": "helm", "url": "https://charts.example.com", "name": "podinfo", "version": "6.6.0"},
                        "release": {"name": format!("app-{i:05}"), "namespace": ns},
                        "values": {"source": "inline", "inline": {"replicas": 1}},
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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let t1 = Instant::now();
    let ctrl = tokio::spawn(controllers::run(client.clone(), config, metrics, async {
        let _ = stop_rx.await;
    }));
    let hr_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
        "helmreleases",
    );
    let hrs = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &hr_ar);
    wait(&format!("{n} HelmReleases"), || async {
        Ok(hrs.list_metadata(&ListParams::default()).await?.items.len() >= n)
    })
    .await?;
    let t_hr = t1.elapsed();
    wait("all statuses written", || async {
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

    // 3. With the helm-controller stand-in: time to Ready=True everywhere.
    let t2 = Instant::now();
    let standins = vworkspace_e2e::standins::run_all(client.clone(), Default::default());
    wait("all Ready=True", || async {
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
    let t_ready = t2.elapsed();
    println!(
        "with StandInHelmController: all {n} Ready=True after {t_ready:.2?} ({:.0}/s)",
        n as f64 / t_ready.as_secs_f64()
    );
    standins.abort();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), ctrl).await;
    Ok(())
}

/// Polls `check` every 200 ms for up to 10 minutes.
async fn wait<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
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
