//! Reconcile throughput of the ApplicationInstance controller against a real
//! kube-apiserver + etcd with the real Flux CRDs.
//!
//! 0. Packages the test chart `hello` (tests/charts) and serves it from a
//!    local Helm repository; every instance installs `hello` 0.1.0 from it.
//! 1. Creates N ApplicationInstances (controllers not running yet).
//! 2. The ceiling: a plain client server-side-applies the same downstream
//!    objects the controller would write (a HelmRepository and a HelmRelease
//!    per instance, the former design, and the objects the controller writes
//!    now: one shared HelmRepository per namespace and URL plus the
//!    HelmReleases) into another namespace with the controller's parallelism.
//!    Same API server, same run, so the ratio ceiling / controller survives a
//!    busy machine.
//! 3. Starts the controllers and measures the time until all N HelmReleases
//!    exist and all N statuses are written (pure controller throughput: Flux
//!    is not running yet). The API server's own request counters
//!    (`apiserver_request_total`) give the writes and reads per instance.
//! 4. Unless `--no-flux`: starts the real Flux source-controller and
//!    helm-controller and measures the time until all N instances are
//!    Ready=True: the chart fetches, N Helm installs, N status round trips.
//!    On a small machine Flux dominates this number (helm-controller installs
//!    4 releases at a time by default).
//!
//! Lines starting with `figure ` are for `tests/bench`.
//!
//! `cargo run --release -p vworkspace-agent --example reconcile-throughput -- [N [CONCURRENCY]] [--no-flux]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    },
};
use serde_json::json;
use vworkspace_agent::controllers::{self, Config, Metrics, application::flux};
use vworkspace_crds::{ApplicationInstance, manifests};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_flux = !args.iter().any(|a| a == "--no-flux");
    let mut numbers = args.iter().filter(|a| !a.starts_with("--"));
    let n: usize = numbers
        .next()
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(1000);
    let mut config = Config::default();
    if let Some(c) = numbers.next() {
        config.concurrency = c.parse().context("CONCURRENCY must be a number")?;
    }
    let concurrency = config.concurrency;

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
    let mut flux_crds = Vec::new();
    for set in sets {
        flux_crds.extend(
            set.crds()?
                .into_iter()
                .filter(|c| c.spec.group.ends_with("fluxcd.io")),
        );
    }
    vworkspace_e2e::crds::install(&client, &flux_crds).await?;
    let ns = vworkspace_e2e::test_namespace(&client, "bench").await?;
    let ceiling_ns = vworkspace_e2e::test_namespace(&client, "ceiling").await?;
    println!(
        "{} logical CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

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
    let mut created = Vec::with_capacity(n);
    for r in results {
        created.push(r?);
    }
    let create = t0.elapsed();
    println!("created {n} ApplicationInstances in {create:.2?}");
    figure("create_instances_s", create.as_secs_f64());

    // 2. The ceiling: a plain client applies the downstream objects.
    let (per_instance, _) = ceiling_objects(&created, &ceiling_ns);
    let before = request_counts(&client).await?;
    let t_ceiling_old = ceiling(&client, &ceiling_ns, &per_instance, concurrency.into()).await?;
    let ceiling_old_counts = request_counts(&client).await?.since(&before);
    println!(
        "ceiling, a HelmRepository + a HelmRelease per instance ({} applies, {concurrency} in flight): {t_ceiling_old:.2?}; {}",
        per_instance.len() * 2,
        ceiling_old_counts.per(n)
    );
    let shared_ns = vworkspace_e2e::test_namespace(&client, "ceiling-shared").await?;
    let (_, shared) = ceiling_objects(&created, &shared_ns);
    let t_ceiling_new = ceiling(&client, &shared_ns, &shared, concurrency.into()).await?;
    println!(
        "ceiling, the objects the controller writes now (shared HelmRepository + a HelmRelease per instance): {t_ceiling_new:.2?}"
    );

    // 3. Controllers only.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let stop = tokio_util::sync::CancellationToken::new();
    let before = request_counts(&client).await?;
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
    // Let the reconciles the last writes triggered finish before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let controller_counts = request_counts(&client).await?.since(&before);
    println!(
        "controllers (concurrency {concurrency}): {n} HelmReleases after {t_hr:.2?} ({:.0}/s), all statuses after {t_status:.2?} ({:.0}/s)",
        n as f64 / t_hr.as_secs_f64(),
        n as f64 / t_status.as_secs_f64()
    );
    println!(
        "controllers, API requests per instance (the test's own polling included in the reads): {}",
        controller_counts.per(n)
    );
    let ratio_old = t_ceiling_old.as_secs_f64() / t_status.as_secs_f64();
    let ratio_new = t_ceiling_new.as_secs_f64() / t_status.as_secs_f64();
    println!(
        "ratio ceiling / controller: {ratio_old:.2} (ceiling: a source + a HelmRelease per instance), {ratio_new:.2} (ceiling: the objects written now)"
    );
    figure("controller_hr_s", t_hr.as_secs_f64());
    figure("controller_status_s", t_status.as_secs_f64());
    figure("ceiling_per_instance_source_s", t_ceiling_old.as_secs_f64());
    figure("ceiling_shared_source_s", t_ceiling_new.as_secs_f64());
    figure("ratio_ceiling_controller", ratio_old);
    figure("ratio_ceiling_shared_controller", ratio_new);
    figure(
        "controller_writes_per_instance",
        controller_counts.writes() as f64 / n as f64,
    );
    figure(
        "controller_status_writes_per_instance",
        controller_counts.get("APPLY", "applicationinstances/status") as f64 / n as f64,
    );

    // 4. With the real Flux: time to Ready=True everywhere.
    if with_flux {
        let t2 = Instant::now();
        let flux = vworkspace_e2e::upstream::Flux::start(&cp, dir.path()).await?;
        let t_flux = t2.elapsed();
        let t3 = Instant::now();
        let first_ready = std::sync::Mutex::new(None);
        // Generous: a few seconds of Flux work per release on two cores.
        let ready_timeout = SHORT.max(Duration::from_secs(3 * n as u64));
        let hr_ready = std::sync::Mutex::new(None);
        wait("all Ready=True", ready_timeout, || async {
            let list = api.list(&ListParams::default()).await?;
            let ready = list
                .items
                .iter()
                .filter(|a| {
                    a.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            {
                let mut first = first_ready.lock().unwrap_or_else(|p| p.into_inner());
                if ready > 0 && first.is_none() {
                    *first = Some(t3.elapsed());
                }
            }
            let hrs_pending = hr_ready.lock().unwrap_or_else(|p| p.into_inner()).is_none();
            if hrs_pending {
                let hrs = hrs.list(&ListParams::default()).await?;
                let ready_hrs = hrs
                    .items
                    .iter()
                    .filter(|h| {
                        h.data["status"]["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
                    .count();
                if ready_hrs >= n {
                    *hr_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(t3.elapsed());
                }
            }
            Ok(ready >= n)
        })
        .await?;
        let t_ready = t3.elapsed();
        let t_hrs_ready = hr_ready
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(t_ready);
        println!(
            "real Flux (start took {t_flux:.2?}): first instance Ready after {:.2?}, all {n} HelmReleases Ready after {t_hrs_ready:.2?}, all {n} instances Ready=True {t_ready:.2?} after Flux was up ({:.1}/s)",
            first_ready
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(t_ready),
            n as f64 / t_ready.as_secs_f64()
        );
        figure("flux_start_s", t_flux.as_secs_f64());
        figure("flux_all_helmreleases_ready_s", t_hrs_ready.as_secs_f64());
        figure("flux_all_instances_ready_s", t_ready.as_secs_f64());
        drop(flux);
    }
    drop(charts);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), ctrl).await;
    gate_watch.abort();
    Ok(())
}

/// A machine-readable figure for `tests/bench`.
fn figure(name: &str, value: f64) {
    println!("figure {name} {value:.4}");
}

/// Deadline of the phases without Flux.
const SHORT: Duration = Duration::from_secs(600);

/// The controller's desired objects for `created`, moved to `ns` without
/// owners or labels (a plain client's objects): per instance a source and a
/// HelmRelease, and the same with one shared source.
fn ceiling_objects(
    created: &[ApplicationInstance],
    ns: &str,
) -> (Vec<Vec<DynamicObject>>, Vec<Vec<DynamicObject>>) {
    let plain = |mut o: DynamicObject| {
        o.metadata.namespace = Some(ns.to_string());
        o.metadata.owner_references = None;
        o.metadata.labels = None;
        o
    };
    let mut per_instance = Vec::new();
    let mut shared = Vec::new();
    let mut shared_sources = std::collections::BTreeSet::new();
    for ai in created {
        let Some(d) = flux::desired(ai) else { continue };
        let release = plain(d.release.clone());
        let mut own_source = plain(d.source.clone());
        own_source.metadata.name = Some(format!("{}-source", ai.name_any()));
        let mut own_release = release.clone();
        own_release.data["spec"]["chart"]["spec"]["sourceRef"]["name"] =
            json!(own_source.name_any());
        per_instance.push(vec![own_source, own_release]);
        let source = plain(d.source);
        let mut objs = Vec::new();
        if shared_sources.insert(source.name_any()) {
            objs.push(source);
        }
        objs.push(release);
        shared.push(objs);
    }
    (per_instance, shared)
}

/// Server-side-applies each group of objects in order, `concurrency` groups
/// at a time; returns the wall time.
async fn ceiling(
    client: &Client,
    ns: &str,
    groups: &[Vec<DynamicObject>],
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let pp = PatchParams::apply("vworkspace-bench-ceiling").force();
    let t = Instant::now();
    let results: Vec<Result<(), kube::Error>> = stream::iter(groups)
        .map(|objs| {
            let pp = pp.clone();
            async move {
                for o in objs {
                    let types = o.types.clone().unwrap_or_default();
                    let (group, version) = types
                        .api_version
                        .split_once('/')
                        .unwrap_or(("", types.api_version.as_str()));
                    let plural = match types.kind.as_str() {
                        "HelmRepository" => "helmrepositories",
                        "OCIRepository" => "ocirepositories",
                        _ => "helmreleases",
                    };
                    let ar = ApiResource::from_gvk_with_plural(
                        &GroupVersionKind::gvk(group, version, &types.kind),
                        plural,
                    );
                    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
                        .patch(&o.name_any(), &pp, &Patch::Apply(o))
                        .await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(t.elapsed())
}

/// `apiserver_request_total` summed per (verb, resource[/subresource]).
#[derive(Debug, Default)]
struct RequestCounts(BTreeMap<(String, String), f64>);

impl RequestCounts {
    fn since(&self, before: &RequestCounts) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    fn get(&self, verb: &str, resource: &str) -> f64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    fn writes(&self) -> f64 {
        self.0
            .iter()
            .filter(|((verb, _), _)| {
                matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// `VERB resource n/instance, …`, writes first.
    fn per(&self, n: usize) -> String {
        let mut rows: Vec<_> = self
            .0
            .iter()
            .filter(|((verb, _), _)| verb != "WATCH")
            .map(|((verb, resource), v)| (verb.clone(), resource.clone(), v / n as f64))
            .filter(|(_, _, v)| *v >= 0.005)
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let parts: Vec<String> = rows
            .iter()
            .map(|(verb, resource, v)| format!("{verb} {resource} {v:.2}"))
            .collect();
        format!(
            "writes {:.2}/instance [{}]",
            self.writes() / n as f64,
            parts.join(", ")
        )
    }
}

/// Reads the API server's request counters from `/metrics`.
async fn request_counts(client: &Client) -> anyhow::Result<RequestCounts> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        *counts.entry((label("verb"), resource)).or_insert(0.0) += v;
    }
    Ok(RequestCounts(counts))
}

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
