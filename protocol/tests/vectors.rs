//! Checks every file in `protocol/vectors/` against this implementation, and
//! that regenerating them would not change a byte.

mod support;

use serde_json::Value;
use support::vectors;
use vworkspace_protocol::*;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e}; run `cargo run -p vworkspace-protocol --example gen-vectors`",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("vector json")
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

#[test]
fn committed_vectors_match_the_generator() {
    // Compared as JSON values so key order (serde_json's map flavour) does not
    // matter; every byte string is hex inside them, so bytes compare exactly.
    for (name, text) in vectors::all() {
        let generated: Value = serde_json::from_str(&text).expect("generated json");
        assert!(
            load(name) == generated,
            "protocol/vectors/{name} is stale: run `cargo run -p vworkspace-protocol --example gen-vectors` and commit the result"
        );
    }
}

#[test]
fn every_frame_vector_decodes_to_its_meaning_and_reencodes_byte_exact() {
    let file = load("frames.json");
    let vs = file["vectors"].as_array().expect("vectors");
    let mut types = std::collections::BTreeSet::new();
    for v in vs {
        let bytes = unhex(&v["hex"]);
        let env =
            decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        assert_eq!(vectors::meaning(&env), v["decoded"], "{}", v["name"]);
        assert_eq!(
            encode(&env, &Limits::default()).expect("encode"),
            bytes,
            "{}",
            v["name"]
        );
        types.insert(env.body.type_name().to_owned());
    }
    let all = [
        "welcome",
        "intent",
        "resync_request",
        "cert_issued",
        "goodbye",
        "error",
        "hello",
        "intent_ack",
        "status",
        "inventory",
        "event",
        "renew_cert",
    ];
    for t in all {
        assert!(types.contains(t), "no vector for frame type {t}");
    }
}

#[test]
fn forward_compat_vectors() {
    let file = load("frames.json");
    let fc = file["forward_compat"].as_array().expect("forward_compat");
    let unknown = decode(&unhex(&fc[0]["hex"]), &Limits::default()).expect("unknown type decodes");
    assert_eq!(unknown.seq, 9);
    assert_eq!(
        unknown.body,
        Frame::Unsupported {
            type_name: "ping2".into()
        }
    );
    let extra = decode(&unhex(&fc[1]["hex"]), &Limits::default()).expect("unknown fields decode");
    assert_eq!(vectors::meaning(&extra), fc[1]["expect"]["decoded"]);
    match extra.body {
        Frame::Hello(h) => assert_eq!(h.agent_version, "0.2.0"),
        other => panic!("expected hello, got {other:?}"),
    }
}

#[test]
fn every_intent_vector_verifies_to_its_expected_outcome() {
    let file = load("intents.json");
    let keys: Vec<PublicKeyInfo> = serde_json::from_value(file["keys"].clone()).expect("keys");
    let ring = KeyRing::from_infos(&keys).expect("ring");
    assert_eq!(
        hex::decode(file["signing_context_hex"].as_str().unwrap()).unwrap(),
        INTENT_SIGNING_CONTEXT
    );
    let mut seen = std::collections::BTreeSet::new();
    for v in file["vectors"].as_array().expect("vectors") {
        let name = v["name"].as_str().unwrap();
        let env =
            decode(&unhex(&v["frame_hex"]), &Limits::default()).expect("intent frame decodes");
        let Frame::Intent(signed) = env.body else {
            panic!("{name}: not an intent frame")
        };
        assert_eq!(signed.payload, unhex(&v["payload_hex"]), "{name}");
        assert_eq!(signed.signature, unhex(&v["signature_hex"]), "{name}");
        assert_eq!(
            signed.signing_input(),
            unhex(&v["signing_input_hex"]),
            "{name}"
        );
        let ctx = vectors::verify_context(&v["context"]);
        match (ring.verify(&signed, &ctx), &v["expect"]) {
            (Ok(verified), Value::String(s)) if s == "ok" => {
                assert_eq!(
                    serde_json::to_value(&verified.payload).unwrap(),
                    v["payload"],
                    "{name}"
                );
                seen.insert("ok".to_owned());
            }
            (Err(r), expect) if expect["rejected"] == r.code().as_str() => {
                seen.insert(r.code().as_str().to_owned());
            }
            (got, expect) => panic!("{name}: expected {expect}, got {got:?}"),
        }
    }
    for code in [
        "ok",
        "bad_signature",
        "unknown_key",
        "foreign_cluster",
        "expired",
        "not_yet_valid",
        "replayed",
        "oversized",
        "unsupported_version",
        "malformed",
    ] {
        assert!(seen.contains(code), "no intent vector with outcome {code}");
    }
}

#[test]
fn every_decode_error_vector_is_refused_with_its_code() {
    let file = load("decode_errors.json");
    for v in file["vectors"].as_array().expect("vectors") {
        let limits =
            Limits::default().with_max_frame_bytes(v["max_frame_bytes"].as_u64().unwrap() as usize);
        let err = decode(&unhex(&v["hex"]), &limits).expect_err(v["name"].as_str().unwrap());
        assert_eq!(
            err.error_code().as_str(),
            v["expect_error"],
            "{}: {err}",
            v["name"]
        );
    }
}

#[test]
fn join_token_vector_verifies_and_parses() {
    let file = load("join_token.json");
    let key: PublicKeyInfo = serde_json::from_value(file["key"].clone()).expect("key");
    let ring = KeyRing::from_infos([&key]).expect("ring");
    let now = file["now"].as_i64().unwrap();
    let raw = file["token"].as_str().unwrap();
    let verified = verify_join_token(raw, &ring, now).expect("verifies");
    assert_eq!(
        serde_json::to_value(verified.claims()).unwrap(),
        file["claims"]
    );
    let parsed = JoinToken::parse(raw, now).expect("parses");
    assert_eq!(parsed.claims(), verified.claims());
}

#[test]
fn recovery_proofs_verify_exactly_when_marked_valid() {
    use vworkspace_protocol::recovery::{ProofKey, RECOVERY_CONTEXT, verify_proof};
    let file = load("recovery.json");
    let input = unhex(&file["signing_input_hex"]);
    let mut expected = RECOVERY_CONTEXT.to_vec();
    expected.extend(unhex(&file["certificate_sha256_hex"]));
    expected.extend(unhex(&file["csr_sha256_hex"]));
    assert_eq!(input, expected);
    let key = unhex(&file["public_key_hex"]);
    let proofs = file["proofs"].as_array().expect("proofs");
    assert_eq!(proofs.len(), 3);
    for p in proofs {
        let ok = verify_proof(ProofKey::Ed25519, &key, &input, &unhex(&p["proof_hex"])).is_ok();
        assert_eq!(ok, p["valid"] == true, "{}", p["name"]);
    }
}

#[test]
fn chunk_vectors_decode_reencode_and_assemble_as_specified() {
    use vworkspace_protocol::chunk::{Assembly, ChunkError};
    let file = load("chunks.json");
    for v in file["frames"].as_array().expect("frames") {
        let bytes = unhex(&v["hex"]);
        let env =
            decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        assert_eq!(vectors::meaning(&env), v["decoded"], "{}", v["name"]);
        assert_eq!(encode(&env, &Limits::default()).expect("encode"), bytes);
    }
    let kind = |e: &ChunkError| match e {
        ChunkError::Invalid { .. } => "invalid",
        ChunkError::TooManyChunks { .. } => "too_many_chunks",
        ChunkError::OutOfOrder { .. } => "out_of_order",
        ChunkError::Interrupted { .. } => "interrupted",
        ChunkError::TooManyEntries { .. } => "too_many_entries",
        ChunkError::TimedOut { .. } => "timed_out",
        _ => "other",
    };
    for case in file["assembly"].as_array().expect("assembly") {
        let name = case["name"].as_str().expect("name");
        let mut a: Assembly<u64> = Assembly::new(
            case["max_chunks"].as_u64().expect("max_chunks") as u32,
            case["max_entries"].as_u64().expect("max_entries") as usize,
        );
        for step in case["steps"].as_array().expect("steps") {
            let chunk: Option<Chunk> =
                serde_json::from_value(step["chunk"].clone()).expect("chunk");
            let entries: Vec<u64> =
                serde_json::from_value(step["entries"].clone()).expect("entries");
            let got = match a.push(chunk, entries) {
                Ok(None) => serde_json::json!("pending"),
                Ok(Some(all)) => serde_json::json!({"complete": all}),
                Err(e) => serde_json::json!({"error": kind(&e)}),
            };
            assert_eq!(got, step["expect"], "{name}");
        }
    }
}

#[test]
fn digest_vectors_bucket_hash_and_check_as_specified() {
    use vworkspace_protocol::digest::{self as d, DigestError};
    let file = load("digest.json");
    let entries = vectors::digest_entries();
    for o in file["objects"].as_array().expect("objects") {
        let obj: ObjectRef = serde_json::from_value(o["object"].clone()).expect("object");
        let pre = unhex(&o["preimage_hex"]);
        let sha = unhex(&o["sha256_hex"]);
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &pre).as_ref(),
            &sha[..]
        );
        let first = u32::from_be_bytes(sha[..4].try_into().unwrap());
        for n in [16u32, 1024] {
            let b = o[format!("bucket_{n}")].as_u64().expect("bucket") as u32;
            assert_eq!(first % n, b);
            assert_eq!(d::bucket_of(&obj, n), b);
        }
    }
    let count = file["bucket_count"].as_u64().expect("count") as u32;
    let hashes = d::bucket_hashes(&entries, count);
    for b in file["buckets"].as_array().expect("buckets") {
        let i = b["bucket"].as_u64().expect("bucket") as usize;
        let hashed = unhex(&b["hashed_hex"]);
        let sha = ring::digest::digest(&ring::digest::SHA256, &hashed);
        assert_eq!(&sha.as_ref()[..16], &unhex(&b["hash_hex"])[..]);
        assert_eq!(hashes[i], unhex(&b["hash_hex"]));
    }
    for v in file["frames"].as_array().expect("frames") {
        let bytes = unhex(&v["hex"]);
        let env =
            decode(&bytes, &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        assert_eq!(vectors::meaning(&env), v["decoded"], "{}", v["name"]);
        assert_eq!(encode(&env, &Limits::default()).expect("encode"), bytes);
    }
    let kind = |e: DigestError| match e {
        DigestError::BucketCount { .. } => "bucket_count",
        DigestError::HashCount { .. } => "hash_count",
        DigestError::HashLength { .. } => "hash_length",
        DigestError::BucketList { .. } => "bucket_list",
        _ => "other",
    };
    let got = |r: Result<(), DigestError>| match r {
        Ok(()) => serde_json::json!("ok"),
        Err(e) => serde_json::json!({"error": kind(e)}),
    };
    for c in file["summaries"].as_array().expect("summaries") {
        let s = InventorySummary {
            bucket_count: c["bucket_count"].as_u64().expect("count") as u32,
            hashes: c["hash_lengths"]
                .as_array()
                .expect("lengths")
                .iter()
                .map(|n| vec![0; n.as_u64().expect("len") as usize])
                .collect(),
        };
        assert_eq!(
            got(d::check_summary(&s, d::MAX_BUCKETS)),
            c["expect"],
            "{}",
            c["name"]
        );
    }
    for c in file["bucket_lists"].as_array().expect("bucket_lists") {
        let list: Vec<u32> = serde_json::from_value(c["buckets"].clone()).expect("buckets");
        let count = c["bucket_count"].as_u64().expect("count") as u32;
        assert_eq!(
            got(d::check_buckets(&list, count)),
            c["expect"],
            "{}",
            c["name"]
        );
    }
    assert_eq!(file["error"]["code"], "digest_error");
}
