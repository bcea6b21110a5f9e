//! Benchmark (ignored by default; numbers go to docs/benchmarks.md):
//! the agent binary as its own process against the real control plane and an
//! in-process hub-sim. Measures RSS idle and with 1,000 ApplicationInstances,
//! and the time from `hub-sim apply` of each of 1,000 intents to its object
//! being present in the API server (p50/p99).
//!
//! A second benchmark (`big_cluster_rss_and_reconnect_digest`) holds 10,000
//! ApplicationInstances (`VWS_BENCH_BIG_N`), reads the agent's RSS, cuts the
//! tunnel, changes 10 statuses while it is down, and counts the bytes the
//! agent sends after it reconnects (Hello, InventorySummary, the Inventory of
//! the buckets the hub asked for, Status).
//!
//! cargo test --release -p vworkspace-agent --test agent_bench -- --ignored --nocapture --test-threads 1

mod agent_support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_support::*;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use vworkspace_crds::ApplicationInstance;

const N: usize = 1000;
const SINGLE: usize = 50;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn pending_statuses(admin: std::net::SocketAddr) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with("vworkspace_agent_queue_depth{queue=\"status_pending\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn agent_rss_and_intent_to_object_latency() {
    let cluster = "edge-bench";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token: _,
    } = joined("bench", cluster).await;

    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vworkspace-agent"))
        .arg("run")
        .args(["--namespace", &cp.agent_ns])
        .args(["--cluster-object", &cp.cluster_object])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--pod-name", "bench-1"])
        .args(["--controllers", "false"])
        .args(["--log-level", "warn"])
        .env("KUBECONFIG", vworkspace_e2e::shared().kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting vworkspace-agent");
    let pid = child.id().unwrap();

    eventually(Duration::from_secs(120), "the agent connected", || async {
        hub.hub.is_connected(cluster).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "an idle status stream", || async {
        pending_statuses(admin).await.filter(|n| *n == 0.0)
    })
    .await;
    let idle_rss = rss_kib(pid);

    let ns = vworkspace_e2e::test_namespace(&cp.client, "bench")
        .await
        .unwrap();
    // Watch the namespace and note when each object first appears.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let api: Api<ApplicationInstance> = Api::namespaced(cp.client.clone(), &ns);
    let watch = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        let mut ready = Some(ready_tx);
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    if let Some(n) = o.metadata.name {
                        let _ = seen_tx.send((n, now));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                _ => {}
            }
        }
    });
    // The clock starts once the watch is established.
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("the test watch did not start")
        .unwrap();

    // Unloaded: one intent at a time, each waiting for its object.
    let mut single = Vec::with_capacity(SINGLE);
    for i in 0..SINGLE {
        let name = format!("one-{i:03}");
        let t0 = Instant::now();
        hub.hub
            .apply(Some(cluster), &app_manifest(&ns, &name, "bench"))
            .expect("hub apply");
        loop {
            let (n, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await
                .expect("object did not appear")
                .expect("watch ended");
            if n == name {
                single.push(at.duration_since(t0));
                break;
            }
        }
    }
    single.sort();

    let started = Instant::now();
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(N);
    for i in 0..N {
        let name = format!("app-{i:04}");
        sent.insert(name.clone(), Instant::now());
        hub.hub
            .apply(Some(cluster), &app_manifest(&ns, &name, "bench"))
            .expect("hub apply");
    }
    let applied_in = started.elapsed();
    let mut latencies = Vec::with_capacity(N);
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while first_seen.len() < N {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {N} objects appeared",
            first_seen.len()
        );
        if let Ok(Some((name, at))) = tokio::time::timeout(left, seen_rx.recv()).await
            && let Some(t0) = sent.get(&name)
            && !first_seen.contains_key(&name)
        {
            first_seen.insert(name, at);
            latencies.push(at.duration_since(*t0));
        }
    }
    let all_in = started.elapsed();
    watch.abort();
    latencies.sort();

    // Baseline in the same run: a plain client server-side-applies the same
    // 1,000 objects into another namespace, 16 at a time (the agent applies
    // intents for different objects 16 at a time).
    let base_ns = vworkspace_e2e::test_namespace(&cp.client, "bench-base")
        .await
        .unwrap();
    let base_api: Api<ApplicationInstance> = Api::namespaced(cp.client.clone(), &base_ns);
    let t = Instant::now();
    let results: Vec<Result<ApplicationInstance, kube::Error>> = futures::stream::iter(0..N)
        .map(|i| {
            let api = base_api.clone();
            let name = format!("app-{i:04}");
            let m = app_manifest(&base_ns, &name, "bench");
            async move {
                api.patch(
                    &name,
                    &kube::api::PatchParams::apply("vworkspace-bench-baseline").force(),
                    &kube::api::Patch::Apply(&m),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r.expect("baseline apply");
    }
    let baseline = t.elapsed();

    // Status stream settled for 1,000 objects.
    eventually(
        Duration::from_secs(120),
        "statuses of 1,000 objects sent",
        || async { pending_statuses(admin).await.filter(|n| *n == 0.0) },
    )
    .await;
    let loaded_rss = rss_kib(pid);

    let report = format!(
        "agent RSS idle (connected, 0 objects): {:.1} MiB\n\
         agent RSS with {N} ApplicationInstances: {:.1} MiB\n\
         {N} intents: hub apply loop {:.2?}, all objects present after {:.2?} ({:.0} intents/s)\n\
         intent -> object latency in the burst: p50 {} ms, p99 {} ms, max {} ms\n\
         intent -> object latency one at a time ({SINGLE} intents): p50 {} ms, p99 {} ms\n",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        applied_in,
        all_in,
        N as f64 / all_in.as_secs_f64(),
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis(),
        latencies[latencies.len() - 1].as_millis(),
        percentile(&single, 0.50).as_millis(),
        percentile(&single, 0.99).as_millis(),
    );
    println!("\n=== agent benchmark ===\n{report}");
    println!(
        "baseline: a plain client applies the same {N} objects (16 in flight) in {baseline:.2?}; ratio baseline / agent burst {:.2}",
        baseline.as_secs_f64() / all_in.as_secs_f64()
    );
    let figure = |name: &str, v: f64| println!("figure {name} {v:.4}");
    figure("agent_rss_idle_mib", idle_rss as f64 / 1024.0);
    figure("agent_rss_1000_mib", loaded_rss as f64 / 1024.0);
    figure("burst_all_present_s", all_in.as_secs_f64());
    figure("burst_baseline_plain_apply_s", baseline.as_secs_f64());
    figure(
        "burst_p50_ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
    );
    figure(
        "burst_p99_ms",
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    figure(
        "single_p50_ms",
        percentile(&single, 0.50).as_secs_f64() * 1e3,
    );
    figure(
        "single_p99_ms",
        percentile(&single, 0.99).as_secs_f64() * 1e3,
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    hub.shutdown().await;
    // The next benchmark's agent shares this control plane and would hold
    // these objects as ones it found (the hub stores few of those, so they
    // would count as changed on every reconnect): remove them.
    for namespace in [&ns, &base_ns] {
        let api: Api<ApplicationInstance> = Api::namespaced(cp.client.clone(), namespace);
        api.delete_collection(&Default::default(), &Default::default())
            .await
            .expect("deleting the benchmark's ApplicationInstances");
        eventually(Duration::from_secs(120), "the instances gone", || async {
            api.list_metadata(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        })
        .await;
    }
}

/// Sum of `vworkspace_agent_frame_bytes_total` or `_frames_total` for one
/// outgoing frame type.
async fn out_metric(admin: std::net::SocketAddr, metric: &str, frame_type: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    let want = format!("direction=\"out\",type=\"{frame_type}\"}}");
    body.lines()
        .filter(|l| l.starts_with(metric) && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn out_counts(admin: std::net::SocketAddr) -> HashMap<&'static str, (f64, f64)> {
    let mut m = HashMap::new();
    for t in [
        "hello",
        "inventory",
        "inventory_summary",
        "status",
        "intent_ack",
        "event",
    ] {
        let frames = out_metric(admin, "vworkspace_agent_frames_total", t).await;
        let bytes = out_metric(admin, "vworkspace_agent_frame_bytes_total", t).await;
        m.insert(t, (frames, bytes));
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
async fn big_cluster_rss_and_reconnect_digest() {
    let n: usize = std::env::var("VWS_BENCH_BIG_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const CHANGED: usize = 10;
    let cluster = "edge-big";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token: _,
    } = joined("big", cluster).await;
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vworkspace-agent"))
        .arg("run")
        .args(["--namespace", &cp.agent_ns])
        .args(["--cluster-object", &cp.cluster_object])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--pod-name", "big-1"])
        .args(["--controllers", "false"])
        .args(["--log-level", "warn"])
        .env("KUBECONFIG", vworkspace_e2e::shared().kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting vworkspace-agent");
    let pid = child.id().unwrap();
    eventually(Duration::from_secs(120), "the agent connected", || async {
        hub.hub.is_connected(cluster).then_some(())
    })
    .await;
    let idle_rss = rss_kib(pid);

    // n intents through the hub; the agent applies them and streams statuses.
    let ns = vworkspace_e2e::test_namespace(&cp.client, "big")
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        hub.hub
            .apply(
                Some(cluster),
                &app_manifest(&ns, &format!("app-{i:05}"), "big"),
            )
            .expect("hub apply");
    }
    let api: Api<ApplicationInstance> = Api::namespaced(cp.client.clone(), &ns);
    eventually(
        Duration::from_secs(1200),
        "every object applied",
        || async {
            let pending = hub.hub.store().pending_intents(cluster, 0, 1).ok()?;
            pending.is_empty().then_some(())
        },
    )
    .await;
    let applied_in = t.elapsed();
    eventually(Duration::from_secs(600), "every status sent", || async {
        pending_statuses(admin).await.filter(|n| *n == 0.0)
    })
    .await;
    // Sent is not yet stored: the hub may still be working through a backlog
    // of statuses. The figure is about a hub that was up to date at the cut:
    // every object has a status at the hub and the stored hashes no longer
    // change between two readings 2 s apart.
    let stored = || {
        let rows = hub.hub.store().statuses(Some(cluster), None).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in &rows {
            std::hash::Hash::hash(&(&r.name, &r.hash), &mut h);
        }
        Some((rows.len(), std::hash::Hasher::finish(&h)))
    };
    let mut last = None;
    eventually(
        Duration::from_secs(600),
        "the hub's statuses settled",
        || {
            let now = stored();
            let settled = now.is_some_and(|(len, _)| len > n) && now == last;
            last = now;
            async move {
                if !settled {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                settled.then_some(())
            }
        },
    )
    .await;
    // Let the watch caches and allocator settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded_rss = rss_kib(pid);
    let initial = out_counts(admin).await;
    let figure = |name: &str, v: f64| println!("figure {name} {v:.4}");
    figure("big_n", n as f64);
    figure("big_apply_s", applied_in.as_secs_f64());
    figure("big_rss_mib", loaded_rss as f64 / 1024.0);
    figure("big_rss_idle_mib", idle_rss as f64 / 1024.0);
    figure("full_status_bytes", initial["status"].1);
    figure("full_inventory_bytes", initial["inventory"].1);

    // Cut the tunnel; while it is down, change CHANGED statuses.
    hub.hub
        .set_faults(
            cluster,
            hub_sim::faults::Faults {
                drop_after_frames: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    eventually(Duration::from_secs(60), "the tunnel dropped", || async {
        (!hub.hub.is_connected(cluster)).then_some(())
    })
    .await;
    for i in 0..CHANGED {
        api.patch_status(
            &format!("app-{i:05}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {"observedGeneration": 42}})),
        )
        .await
        .expect("status patch");
    }
    // The agent's watch sees the changes before the tunnel comes back.
    eventually(Duration::from_secs(60), "the changes seen", || async {
        pending_statuses(admin)
            .await
            .filter(|p| *p >= CHANGED as f64)
    })
    .await;
    let before = out_counts(admin).await;
    hub.hub
        .set_faults(cluster, hub_sim::faults::Faults::default())
        .unwrap();
    eventually(Duration::from_secs(120), "reconnected", || async {
        hub.hub.is_connected(cluster).then_some(())
    })
    .await;
    eventually(Duration::from_secs(120), "the changes sent", || async {
        pending_statuses(admin).await.filter(|p| *p == 0.0)
    })
    .await;
    // The hub's resync requests (if any) answered too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = out_counts(admin).await;
    let delta = |t: &str| {
        let (f0, b0) = before[t];
        let (f1, b1) = after[t];
        (f1 - f0, b1 - b0)
    };
    let (hello_frames, hello_bytes) = delta("hello");
    // Attempts refused while the fault was on also sent a Hello each: count one.
    let hello_one = if hello_frames > 0.0 {
        hello_bytes / hello_frames
    } else {
        0.0
    };
    let (inv_frames, inv_bytes) = delta("inventory");
    let (sum_frames, sum_bytes) = delta("inventory_summary");
    let (st_frames, st_bytes) = delta("status");
    let reconnect_bytes = hello_one + sum_bytes + inv_bytes + st_bytes;
    let (all_st_frames, all_st_bytes) = initial["status"];
    let (_, all_inv_bytes) = initial["inventory"];
    println!(
        "\n=== big cluster benchmark ({n} ApplicationInstances) ===\n\
         {n} intents applied in {applied_in:.2?}\n\
         agent RSS idle {:.1} MiB, with {n} objects {:.1} MiB\n\
         after a reconnect with {CHANGED} changed: hello {:.0} B (one; {hello_frames} sent incl. refused attempts), \
         summary {sum_bytes:.0} B in {sum_frames} frames, \
         inventory {inv_bytes:.0} B in {inv_frames} frames, status {st_bytes:.0} B in {st_frames} frames; total {reconnect_bytes:.0} B\n\
         baseline: every status once (the first connection's stream) {all_st_bytes:.0} B in {all_st_frames} frames (+ inventory {all_inv_bytes:.0} B)",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        hello_one,
    );
    figure("reconnect_hello_bytes", hello_one);
    figure("reconnect_summary_bytes", sum_bytes);
    figure("reconnect_summary_frames", sum_frames);
    figure("reconnect_inventory_bytes", inv_bytes);
    figure("reconnect_inventory_frames", inv_frames);
    figure("reconnect_status_bytes", st_bytes);
    figure("reconnect_status_frames", st_frames);
    figure("reconnect_total_bytes", reconnect_bytes);
    let _ = child.start_kill();
    let _ = child.wait().await;
    hub.shutdown().await;
}
