//! Bucketed reconnect digests (docs/protocol.md sections 7 and 9), against
//! the in-process hub driven by a raw test agent.

mod common;

use std::collections::BTreeSet;

use common::*;
use vworkspace_protocol::digest::{self, bucket_count_for, bucket_of};
use vworkspace_protocol::{
    self as proto, AppliedVersion, Frame, Hello, Inventory, InventoryEntry, InventorySummary,
    ObjectKind, ObjectRef,
};

const N: usize = 2000;

fn obj(i: usize) -> ObjectRef {
    ObjectRef::new(
        ObjectKind::ApplicationInstance,
        format!("team-{:02}", i % 20),
        format!("app-{i:05}"),
    )
}

fn entry(i: usize, version: u64, hash: &str) -> InventoryEntry {
    InventoryEntry {
        object: obj(i),
        version,
        status_hash: hash.into(),
    }
}

fn status(e: &InventoryEntry) -> Frame {
    Frame::Status(proto::Status {
        object: e.object.clone(),
        generation: 1,
        observed_generation: Some(1),
        version: Some(e.version),
        phase: None,
        conditions: vec![],
        outputs: Default::default(),
        hash: e.status_hash.clone(),
        deleted: false,
    })
}

/// Opens a tunnel with a Hello in summary mode (no `applied`).
async fn connect_summary(hub: &hub_sim::RunningHub, creds: &Creds) -> TestAgent {
    let mut a = TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )
    .await
    .unwrap_or_else(|e| panic!("tunnel open failed: {e:?}"));
    a.send(Frame::Hello(Hello {
        agent_version: "test-digest".into(),
        capabilities: vec![],
        applied: vec![],
        max_in_flight: None,
        chunk: None,
        digest_buckets: true,
    }))
    .await;
    match a.recv().await.body {
        Frame::Welcome(w) => {
            assert_eq!(w.digest_buckets, Some(digest::MAX_BUCKETS));
            a.welcome = Some(w);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    a
}

fn summary(entries: &[InventoryEntry]) -> Frame {
    let count = bucket_count_for(entries.len(), digest::MAX_BUCKETS);
    Frame::InventorySummary(digest::summarize(entries, count))
}

/// Proves nothing was queued for the agent before this point: a renewal
/// round trip is answered in order.
async fn nothing_pending(a: &mut TestAgent) {
    let (csr, _) = new_csr();
    a.send(Frame::RenewCert(proto::RenewCert { csr_pem: csr }))
        .await;
    match a.recv().await.body {
        Frame::CertIssued(_) => {}
        other => panic!("expected nothing before cert_issued, got {other:?}"),
    }
}

/// The hub's stored inventory as a set of (object, version, status hash).
fn stored(hub: &hub_sim::RunningHub) -> BTreeSet<(String, String, u64, String)> {
    let inv = hub.hub.store().inventory("edge-1").unwrap().unwrap();
    inv["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["namespace"].as_str().unwrap().to_owned(),
                o["name"].as_str().unwrap().to_owned(),
                o["version"].as_u64().unwrap(),
                o["status_hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn as_set(entries: &[InventoryEntry]) -> BTreeSet<(String, String, u64, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e.object.namespace.clone(),
                e.object.name.clone(),
                e.version,
                e.status_hash.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reconnect_with_a_few_changes_asks_for_exactly_their_buckets() {
    let dir = tempfile::tempdir().unwrap();
    // The objects are the agent's own (undeclared), so the hub must keep
    // all their statuses.
    let hub = start_hub_with(dir.path(), |c| c.storage.max_unknown_objects = 2 * N).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    // Object 17 has a declared intent (version 1) the agent applied while
    // the connection was down, without the ack reaching the hub.
    let seventeen = obj(17);
    hub.hub
        .apply(
            Some("edge-1"),
            &app(&seventeen.name, &seventeen.namespace, 1),
        )
        .unwrap();

    // First connection: a full Hello and Inventory (an agent that just
    // started), then every status.
    let mut agent: Vec<InventoryEntry> =
        (0..N).map(|i| entry(i, 0, &format!("{i:016x}"))).collect();
    let applied: Vec<AppliedVersion> = agent
        .iter()
        .map(|e| AppliedVersion {
            object: e.object.clone(),
            version: e.version,
        })
        .collect();
    let mut a = TestAgent::connect(hub.tls_addr, &creds, applied).await;
    assert_eq!(
        a.welcome.as_ref().unwrap().digest_buckets,
        Some(digest::MAX_BUCKETS),
        "the hub announces bucketed digests"
    );
    a.send(Frame::Inventory(Inventory {
        objects: agent.clone(),
        chunk: None,
        buckets: None,
    }))
    .await;
    for e in &agent {
        a.send(status(e)).await;
    }
    nothing_pending_but_the_first_requests(&mut a).await;
    eventually("every status stored", || async {
        hub.hub
            .store()
            .statuses(Some("edge-1"), None)
            .unwrap()
            .len()
            == N
    })
    .await;
    drop(a);

    // While disconnected: one status changed, object 17 got version 1, one
    // object went away, one appeared.
    agent[5].status_hash = "changed".into();
    agent[17].version = 1;
    let gone = agent.remove(33);
    agent.push(entry(N, 0, "new"));
    let changed: BTreeSet<u32> = [&agent[5].object, &seventeen, &gone.object, &obj(N)]
        .into_iter()
        .map(|o| bucket_of(o, bucket_count_for(agent.len(), digest::MAX_BUCKETS)))
        .collect();

    let mut a = connect_summary(&hub, &creds).await;
    a.send(summary(&agent)).await;
    let count = bucket_count_for(agent.len(), digest::MAX_BUCKETS);
    // The pending intent of object 17 (never acked) is held back until the
    // bucket entries have settled versions.
    let mut requested = None;
    let mut resent = 0;
    while requested.is_none() {
        match a.recv().await.body {
            Frame::ResyncRequest(r) => {
                assert!(r.objects.is_empty(), "{r:?}");
                requested = Some(r.buckets);
            }
            Frame::Intent(_) => resent += 1,
            other => panic!("expected a bucket request, got {other:?}"),
        }
    }
    let requested = requested.unwrap();
    assert_eq!(
        requested.iter().copied().collect::<BTreeSet<_>>(),
        changed,
        "exactly the buckets of the four changed objects"
    );
    assert!(requested.len() <= 4 && (count as usize) > 200);
    assert_eq!(resent, 0, "intents wait for the digest exchange");
    a.send(Frame::Inventory(Inventory {
        objects: digest::entries_in(&agent, &requested, count),
        chunk: None,
        buckets: Some(requested.clone()),
    }))
    .await;
    // The statuses that differ: the changed one and the new object.
    let asked = match a.recv().await.body {
        Frame::ResyncRequest(r) => r.objects.into_iter().collect::<BTreeSet<_>>(),
        other => panic!("expected a status request, got {other:?}"),
    };
    assert_eq!(asked, BTreeSet::from([agent[5].object.clone(), obj(N)]));
    // The bucket entries settled the intent of object 17 (version 1 held),
    // so it is never resent.
    eventually("the intent of object 17 settled", || async {
        hub.hub
            .store()
            .pending_intents("edge-1", 0, 10)
            .unwrap()
            .is_empty()
    })
    .await;
    // The hub now holds what a whole inventory would have given it.
    assert_eq!(stored(&hub), as_set(&agent));
    for e in [&agent[5], agent.last().unwrap()] {
        a.send(status(e)).await;
    }
    nothing_pending(&mut a).await;
    drop(a);

    // Nothing changed since: the next reconnect asks for nothing.
    let mut a = connect_summary(&hub, &creds).await;
    a.send(summary(&agent)).await;
    nothing_pending(&mut a).await;
    hub.shutdown().await;
}

/// After the first whole inventory the hub asks for the statuses it lacks
/// (and perhaps resends intents); those are drained here.
async fn nothing_pending_but_the_first_requests(a: &mut TestAgent) {
    let (csr, _) = new_csr();
    a.send(Frame::RenewCert(proto::RenewCert { csr_pem: csr }))
        .await;
    loop {
        match a.recv().await.body {
            Frame::CertIssued(_) => break,
            Frame::ResyncRequest(r) => assert!(r.buckets.is_empty()),
            Frame::Intent(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn nonsense_summaries_and_bucket_inventories_end_with_digest_error() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let good = digest::summarize(&[entry(1, 1, "a")], 16);
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (
            vec![Frame::InventorySummary(InventorySummary {
                bucket_count: 24,
                hashes: vec![vec![0; 16]; 24],
            })],
            "not a power of two",
        ),
        (
            vec![Frame::InventorySummary(InventorySummary {
                bucket_count: 65_536,
                hashes: vec![],
            })],
            "not a power of two from 16 to 32768",
        ),
        (
            vec![Frame::InventorySummary(InventorySummary {
                bucket_count: 16,
                hashes: good.hashes[..15].to_vec(),
            })],
            "15 bucket hashes",
        ),
        (
            vec![Frame::InventorySummary(InventorySummary {
                bucket_count: 16,
                hashes: {
                    let mut h = good.hashes.clone();
                    h[2] = vec![1; 20];
                    h
                },
            })],
            "hash of bucket 2 is 20 bytes",
        ),
        (
            vec![Frame::Inventory(Inventory {
                objects: vec![],
                chunk: None,
                buckets: Some(vec![0]),
            })],
            "without a summary",
        ),
        (
            vec![
                Frame::InventorySummary(good.clone()),
                Frame::Inventory(Inventory {
                    objects: vec![],
                    chunk: None,
                    buckets: Some(vec![3, 1]),
                }),
            ],
            "not strictly ascending",
        ),
        (
            vec![
                Frame::InventorySummary(good.clone()),
                Frame::Inventory(Inventory {
                    objects: vec![],
                    chunk: None,
                    buckets: Some(vec![16]),
                }),
            ],
            "beyond bucket_count",
        ),
        (
            vec![
                Frame::InventorySummary(good.clone()),
                Frame::InventorySummary(good.clone()),
            ],
            "a second inventory_summary",
        ),
    ];
    for (frames, mentions) in cases {
        let mut a = connect_summary(&hub, &creds).await;
        for f in frames {
            a.send(f).await;
        }
        expect_error_then_close(&mut a, "digest_error", mentions).await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_hub_configured_without_bucketed_digests_does_not_announce_them() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| c.digest_buckets = 0).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    assert_eq!(a.welcome.as_ref().unwrap().digest_buckets, None);
    let mut a = a;
    // A summary sent anyway is a frame this hub does not take: answered,
    // and the connection stays for the whole inventory.
    a.send(summary(&[entry(1, 1, "a")])).await;
    match a.recv().await.body {
        Frame::Error(e) => assert_eq!(e.code, "unsupported_frame", "{e:?}"),
        other => panic!("expected unsupported_frame, got {other:?}"),
    }
    a.send(Frame::Inventory(Inventory {
        objects: vec![entry(1, 1, "a")],
        chunk: None,
        buckets: None,
    }))
    .await;
    match a.recv().await.body {
        Frame::ResyncRequest(r) => assert_eq!(r.objects, vec![obj(1)]),
        other => panic!("expected resync_request, got {other:?}"),
    }
    hub.shutdown().await;
}
