//! Encode + sign + verify + decode of a typical intent frame (an
//! ApplicationInstance apply of about 460 bytes of payload).
//!
//! `cargo bench -p vworkspace-protocol --bench intent_frame`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use vworkspace_protocol::*;

fn payload() -> IntentPayload {
    IntentPayload {
        v: 1,
        intent_id: "0b5c3c1e-8d2a-4f61-9a57-000000000007".into(),
        cluster_id: "c-7f3a9e21".into(),
        org: "acme".into(),
        issued_at: 1_800_000_000,
        expires_at: 1_800_003_600,
        object: ObjectRef::new(ObjectKind::ApplicationInstance, "team-a", "nextcloud"),
        version: 7,
        action: IntentAction::Apply {
            spec: serde_json::json!({
                "appRef": {"catalogId": "nextcloud"},
                "chart": {"name": "nextcloud", "sourceType": "helm", "url": "https://nextcloud.github.io/helm/", "version": "6.6.4"},
                "mode": "managed",
                "release": {"name": "nextcloud", "namespace": "team-a"},
                "values": {"inline": {"persistence": {"enabled": true, "size": "20Gi"}, "replicaCount": 1}, "source": "inline"}
            }),
        },
    }
}

fn bench(c: &mut Criterion) {
    let signer = IntentSigner::from_seed(&[1; 32]).expect("key");
    let mut ring = KeyRing::new();
    ring.insert(signer.public_key());
    let limits = Limits::default();
    let p = payload();
    let signed = signer.sign(&p).expect("sign");
    let env = Envelope::new(2, 1, Frame::Intent(signed.clone()));
    let bytes = encode(&env, &limits).expect("encode");
    let ctx = VerifyContext::new("c-7f3a9e21", 1_800_000_100).with_applied_version(Some(6));

    let mut g = c.benchmark_group("intent_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign (encode payload + ed25519 sign)", |b| {
        b.iter(|| signer.sign(black_box(&p)).expect("sign"))
    });
    g.bench_function("verify (ed25519 verify + decode payload + checks)", |b| {
        b.iter(|| ring.verify(black_box(&signed), &ctx).expect("verify"))
    });
    g.bench_function("encode envelope", |b| {
        b.iter(|| encode(black_box(&env), &limits).expect("encode"))
    });
    g.bench_function("decode envelope", |b| {
        b.iter(|| decode(black_box(&bytes), &limits).expect("decode"))
    });
    g.bench_function("full: sign + encode + decode + verify", |b| {
        b.iter(|| {
            let s = signer.sign(black_box(&p)).expect("sign");
            let out = encode(&Envelope::new(2, 1, Frame::Intent(s)), &limits).expect("encode");
            let back = decode(&out, &limits).expect("decode");
            match back.body {
                Frame::Intent(i) => ring.verify(&i, &ctx).expect("verify"),
                _ => unreachable!("encoded an intent"),
            }
        })
    });
    g.finish();
    eprintln!(
        "frame bytes: {}, payload bytes: {}",
        bytes.len(),
        signed.payload.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
