//! The negotiated in-flight window and chunked Hello/Inventory frames
//! (docs/protocol.md sections 6 and 7), against the in-process hub.

mod common;

use common::*;
use vworkspace_protocol::{
    self as proto, AppliedVersion, Chunk, Frame, Hello, Inventory, InventoryEntry, ObjectKind,
    ObjectRef, chunk,
};

fn hello(applied: Vec<AppliedVersion>, offer: Option<u32>, chunk: Option<Chunk>) -> Frame {
    Frame::Hello(Hello {
        agent_version: "test-chunks".into(),
        capabilities: vec![],
        applied,
        max_in_flight: offer,
        chunk,
        digest_buckets: false,
    })
}

async fn open(hub: &hub_sim::RunningHub, creds: &Creds) -> TestAgent {
    TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )
    .await
    .unwrap_or_else(|e| panic!("tunnel open failed: {e:?}"))
}

async fn welcome(a: &mut TestAgent) -> proto::Welcome {
    match a.recv().await.body {
        Frame::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn the_window_is_the_agent_offer_capped_by_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let cap = hub_sim::Config::ephemeral(dir.path()).window as u32;
    for (offer, granted) in [(Some(5), 5), (Some(u32::MAX), cap), (None, 32.min(cap))] {
        let mut a = open(&hub, &creds).await;
        a.send(hello(vec![], offer, None)).await;
        let w = welcome(&mut a).await;
        assert_eq!(w.max_in_flight, granted, "offer {offer:?}");
        assert_eq!(w.max_chunks, Some(proto::limits::MAX_CHUNKS));
    }
    // The granted window is kept: with 2, the third intent waits for an ack.
    let mut a = open(&hub, &creds).await;
    a.send(hello(vec![], Some(2), None)).await;
    welcome(&mut a).await;
    for i in 0..3 {
        hub.hub
            .apply(Some("edge-1"), &app(&format!("w-{i}"), "team", 1))
            .unwrap();
    }
    let (seq, _, p) = a.recv_intent().await;
    a.recv_intent().await;
    // A renewal round trip proves nothing else was queued before its answer.
    let (csr, _) = new_csr();
    a.send(Frame::RenewCert(proto::RenewCert { csr_pem: csr }))
        .await;
    match a.recv().await.body {
        Frame::CertIssued(_) => {}
        other => panic!("window exceeded: {other:?}"),
    }
    a.ack(seq, &p, proto::IntentOutcome::Applied).await;
    a.recv_intent().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn hello_and_inventory_of_50000_objects_are_chunked_and_assembled() {
    const N: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let obj = |i: usize| {
        ObjectRef::new(
            ObjectKind::ApplicationInstance,
            format!("ns-{}", i % 50),
            format!("app-{i:05}"),
        )
    };
    // The last three objects have a pending intent each, which the assembled
    // Hello settles (the cluster holds version 1 of everything).
    for i in N - 3..N {
        let o = obj(i);
        hub.hub
            .apply(Some("edge-1"), &app(&o.name, &o.namespace, 1))
            .unwrap();
    }
    let applied: Vec<AppliedVersion> = (0..N)
        .map(|i| AppliedVersion {
            object: obj(i),
            version: 1,
        })
        .collect();
    let limits = proto::Limits::default();
    let whole = proto::Envelope::new(1, 0, hello(applied.clone(), Some(256), None));
    assert!(
        proto::encode(&whole, &limits).is_err(),
        "50,000 objects must not fit one frame"
    );
    let hellos = chunk::split(applied, 10_000);
    assert!(hellos.len() as u32 <= proto::limits::MAX_CHUNKS);
    let mut a = open(&hub, &creds).await;
    let mut parts = hellos.into_iter();
    let (c, first) = parts.next().unwrap();
    a.send(hello(first, Some(256), Some(c))).await;
    let w = welcome(&mut a).await;
    assert_eq!(w.max_in_flight, 256);
    // Nothing is delivered before the Hello is complete: the pending intents
    // are settled by the last chunk and never sent.
    for (c, part) in parts {
        a.send(hello(part, None, Some(c))).await;
    }
    eventually(
        "the 3 pending intents settled by the chunked hello",
        || async {
            hub.hub
                .store()
                .pending_intents("edge-1", 0, 10)
                .unwrap()
                .is_empty()
        },
    )
    .await;
    let entries: Vec<InventoryEntry> = (0..N)
        .map(|i| InventoryEntry {
            object: obj(i),
            version: 1,
            status_hash: format!("{i:016x}"),
        })
        .collect();
    for (c, part) in chunk::split(entries, 8_000) {
        a.send(Frame::Inventory(Inventory {
            objects: part,
            chunk: Some(c),
            buckets: None,
        }))
        .await;
    }
    // Reconciled once, after the last chunk: the hub holds no statuses, so it
    // asks for the first 1000 differing ones.
    match a.recv().await.body {
        Frame::ResyncRequest(r) => assert_eq!(r.objects.len(), 1000),
        other => panic!("expected resync_request, got {other:?}"),
    }
    let inv = hub.hub.store().inventory("edge-1").unwrap().unwrap();
    assert_eq!(inv["objects"].as_array().unwrap().len(), N);
    hub.shutdown().await;
}

#[tokio::test]
async fn broken_or_endless_chunks_end_with_chunk_error() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    // A Hello announcing endless chunks is refused before Welcome.
    let mut a = open(&hub, &creds).await;
    a.send(hello(
        vec![],
        None,
        Some(Chunk {
            index: 0,
            count: u32::MAX,
        }),
    ))
    .await;
    expect_error_then_close(&mut a, "chunk_error", "at most 16").await;
    // Inventory chunks out of order.
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    for index in [0, 2] {
        a.send(Frame::Inventory(Inventory {
            objects: vec![],
            chunk: Some(Chunk { index, count: 3 }),
            buckets: None,
        }))
        .await;
    }
    expect_error_then_close(&mut a, "chunk_error", "expected chunk 1 of 3").await;
    // An unchunked Inventory while a set is incomplete.
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    a.send(Frame::Inventory(Inventory {
        objects: vec![],
        chunk: Some(Chunk { index: 0, count: 2 }),
        buckets: None,
    }))
    .await;
    a.send(Frame::Inventory(Inventory::default())).await;
    expect_error_then_close(&mut a, "chunk_error", "unchunked frame").await;
    // Something other than the next Hello chunk after Welcome.
    let mut a = open(&hub, &creds).await;
    a.send(hello(vec![], None, Some(Chunk { index: 0, count: 2 })))
        .await;
    welcome(&mut a).await;
    a.send(Frame::Inventory(Inventory::default())).await;
    match a.recv().await.body {
        Frame::Error(e) => assert_eq!(e.code, "unexpected_frame"),
        other => panic!("expected unexpected_frame, got {other:?}"),
    }
    hub.shutdown().await;
}
