//! Deterministic generator of the files in `protocol/vectors/`.
//!
//! Shared by `examples/gen-vectors.rs` (writes them) and `tests/vectors.rs`
//! (checks them and fails when regenerating would change a byte).

#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use vworkspace_protocol::intent::{INTENT_PAYLOAD_VERSION, pkcs8_from_seed};
use vworkspace_protocol::join_token::JoinClaims;
use vworkspace_protocol::*;

/// The clock every vector is checked at.
pub const NOW: i64 = 1_800_000_000;
/// Cluster id of the receiving agent in every vector.
pub const CLUSTER_ID: &str = "c-7f3a9e21";
/// Org of the receiving agent.
pub const ORG: &str = "acme";

/// A 32-byte seed derived from a label, so keys are reproducible.
pub fn seed(label: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, label.as_bytes());
    let mut s = [0u8; 32];
    s.copy_from_slice(d.as_ref());
    s
}

pub fn hub_key() -> IntentSigner {
    IntentSigner::from_seed(&seed("vworkspace test vector key 1")).expect("seed key")
}
pub fn rotated_key() -> IntentSigner {
    IntentSigner::from_seed(&seed("vworkspace test vector key 2")).expect("seed key")
}
pub fn stranger_key() -> IntentSigner {
    IntentSigner::from_seed(&seed("vworkspace test vector unknown key")).expect("seed key")
}
pub fn ring() -> KeyRing {
    let mut r = KeyRing::new();
    r.insert(hub_key().public_key());
    r.insert(rotated_key().public_key());
    r
}

pub fn app_ref() -> ObjectRef {
    ObjectRef::new(ObjectKind::ApplicationInstance, "team-a", "nextcloud")
}

/// A typical ApplicationInstance spec (keys sorted at every level so the
/// bytes do not depend on serde_json's map implementation).
pub fn app_spec() -> Value {
    json!({
        "appRef": {"catalogId": "nextcloud"},
        "chart": {"name": "nextcloud", "sourceType": "helm", "url": "https://nextcloud.github.io/helm/", "version": "6.6.4"},
        "mode": "managed",
        "release": {"name": "nextcloud", "namespace": "team-a"},
        "values": {"inline": {"persistence": {"enabled": true, "size": "20Gi"}, "replicaCount": 1}, "source": "inline"}
    })
}

pub fn payload(version: u64, action: IntentAction) -> IntentPayload {
    IntentPayload {
        v: INTENT_PAYLOAD_VERSION,
        intent_id: format!("0b5c3c1e-8d2a-4f61-9a57-{version:012}"),
        cluster_id: CLUSTER_ID.into(),
        org: ORG.into(),
        issued_at: NOW - 10,
        expires_at: NOW + 3600,
        object: app_ref(),
        version,
        action,
    }
}

pub fn apply_payload(version: u64) -> IntentPayload {
    payload(version, IntentAction::Apply { spec: app_spec() })
}

/// JSON meaning of an envelope: serde's JSON shape with `bin` fields as hex.
pub fn meaning(env: &Envelope) -> Value {
    let mut v = serde_json::to_value(env).expect("envelope to json");
    if let Some(body) = v.get_mut("body").and_then(Value::as_object_mut)
        && body.get("type") == Some(&json!("inventory_summary"))
        && let Some(hashes) = body.get_mut("hashes").and_then(Value::as_array_mut)
    {
        for h in hashes.iter_mut() {
            let bytes: Vec<u8> = h
                .as_array()
                .expect("bin")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect();
            *h = Value::String(hex::encode(bytes));
        }
    }
    if let Some(body) = v.get_mut("body").and_then(Value::as_object_mut)
        && body.get("type") == Some(&json!("intent"))
    {
        for field in ["payload", "signature"] {
            if let Some(arr) = body.get(field).and_then(Value::as_array) {
                let bytes: Vec<u8> = arr
                    .iter()
                    .map(|b| b.as_u64().expect("byte") as u8)
                    .collect();
                body.insert(field.into(), Value::String(hex::encode(bytes)));
            }
        }
    }
    v
}

fn frame_vector(name: &str, description: &str, env: Envelope) -> Value {
    let bytes = encode(&env, &Limits::default()).expect("encode vector frame");
    json!({"name": name, "description": description, "hex": hex::encode(&bytes), "decoded": meaning(&env)})
}

fn key_json(k: &IntentSigner) -> Value {
    json!({"kid": k.kid(), "public_key_hex": hex::encode(k.public_key().as_bytes())})
}

pub fn frames() -> Value {
    let signed = hub_key().sign(&apply_payload(7)).expect("sign");
    let cond = Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "HelmReleaseReady".into(),
        message: "release nextcloud is ready".into(),
        observed_generation: Some(3),
        last_transition_time: Some("2027-01-15T08:00:00Z".into()),
    };
    let mut outputs = BTreeMap::new();
    outputs.insert("url".to_string(), json!("https://cloud.team-a.example"));
    let frames = vec![
        frame_vector("welcome", "hub -> agent, answer to hello", Envelope::new(1, 1, Frame::Welcome(Welcome {
            cluster_id: CLUSTER_ID.into(),
            org: ORG.into(),
            server_time: NOW,
            heartbeat_secs: 20,
            idle_timeout_secs: 60,
            max_frame_bytes: 1_048_576,
            max_in_flight: 64,
            signing_keys: ring().to_infos(),
            max_chunks: None,
            recovery_window_secs: None,
            ca_bundle_pem: None,
            digest_buckets: None,
        }))),
        frame_vector("welcome_ca_rotation", "hub -> agent, answer to hello from a hub with certificate recovery, during a hub CA rotation: the bundle holds the issuing CA first, then the old one (protocol.md section 5.1)", Envelope::new(1, 1, Frame::Welcome(Welcome {
            cluster_id: CLUSTER_ID.into(),
            org: ORG.into(),
            server_time: NOW,
            heartbeat_secs: 20,
            idle_timeout_secs: 60,
            max_frame_bytes: 1_048_576,
            max_in_flight: 64,
            signing_keys: ring().to_infos(),
            recovery_window_secs: Some(30 * 86_400),
            ca_bundle_pem: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB...(new CA)\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIB...(old CA)\n-----END CERTIFICATE-----\n".into(),
            ),
            max_chunks: None,
            digest_buckets: None,
        }))),
        frame_vector("intent", "hub -> agent, a signed apply intent (see intents.json)", Envelope::new(2, 1, Frame::Intent(signed))),
        frame_vector("resync_request", "hub -> agent", Envelope::new(3, 2, Frame::ResyncRequest(ResyncRequest { reason: Some("hub store restored".into()), objects: vec![app_ref()], buckets: vec![] }))),
        frame_vector("cert_issued", "hub -> agent, answer to renew_cert", Envelope::new(4, 4, Frame::CertIssued(CertIssued {
            certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n".into(),
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIC...\n-----END CERTIFICATE-----\n".into(),
        }))),
        frame_vector("goodbye", "hub -> agent, hub restarting", Envelope::new(5, 4, Frame::Goodbye(Goodbye { reason: "hub shutting down".into(), retry_after_secs: Some(30) }))),
        frame_vector("error", "either direction", Envelope::new(6, 4, Frame::Error(ErrorFrame { code: ErrorCode::UnsupportedFrame.as_str().into(), message: "frame type \"ping2\" is not supported".into() }))),
        frame_vector("hello", "agent -> hub, first frame", Envelope::new(1, 0, Frame::Hello(Hello {
            agent_version: "0.1.0".into(),
            capabilities: vec!["status-digest".into()],
            applied: vec![AppliedVersion { object: app_ref(), version: 6 }],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }))),
        frame_vector("intent_ack_applied", "agent -> hub", Envelope::new(2, 2, Frame::IntentAck(IntentAck {
            intent_id: apply_payload(7).intent_id,
            intent_seq: 2,
            object: Some(app_ref()),
            version: Some(7),
            outcome: IntentOutcome::Applied,
        }))),
        frame_vector("intent_ack_noop", "agent -> hub", Envelope::new(3, 2, Frame::IntentAck(IntentAck {
            intent_id: apply_payload(7).intent_id,
            intent_seq: 2,
            object: Some(app_ref()),
            version: Some(7),
            outcome: IntentOutcome::Noop,
        }))),
        frame_vector("intent_ack_rejected", "agent -> hub", Envelope::new(4, 2, Frame::IntentAck(IntentAck {
            intent_id: apply_payload(7).intent_id,
            intent_seq: 2,
            object: Some(app_ref()),
            version: Some(7),
            outcome: Rejection::Replayed { version: 7, applied: 7 }.to_outcome(),
        }))),
        frame_vector("status", "agent -> hub", Envelope::new(5, 3, Frame::Status(Status {
            object: app_ref(),
            generation: 3,
            observed_generation: Some(3),
            version: Some(7),
            phase: None,
            conditions: vec![cond],
            outputs,
            hash: "9f2c4e1ab0d37c55".into(),
            deleted: false,
        }))),
        frame_vector("inventory", "agent -> hub, digest after reconnect", Envelope::new(6, 3, Frame::Inventory(Inventory {
            objects: vec![InventoryEntry { object: app_ref(), version: 7, status_hash: "9f2c4e1ab0d37c55".into() }],
            chunk: None,
            buckets: None,
        }))),
        frame_vector("event", "agent -> hub, audit", Envelope::new(7, 3, Frame::Event(Event {
            time: NOW,
            severity: "Warning".into(),
            reason: "IntentRejected".into(),
            message: "intent rejected: bad_signature".into(),
            object: Some(app_ref()),
            intent_id: Some(apply_payload(7).intent_id),
        }))),
        frame_vector("renew_cert", "agent -> hub", Envelope::new(8, 3, Frame::RenewCert(RenewCert {
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB...\n-----END CERTIFICATE REQUEST-----\n".into(),
        }))),
    ];
    // Forward compatibility: bytes written by hand from JSON (sorted keys).
    let unknown_type = rmp_serde::to_vec_named(
        &json!({"ack": 0, "body": {"type": "ping2", "nonce": 7}, "seq": 9, "v": 1}),
    )
    .expect("encode");
    let extra_fields = rmp_serde::to_vec_named(&json!({
        "ack": 0, "future": [1, 2],
        "body": {"agent_version": "0.2.0", "applied": [], "capabilities": [], "type": "hello", "zone": "eu-1"},
        "seq": 1, "v": 1
    }))
    .expect("encode");
    let extra_env = decode(&extra_fields, &Limits::default()).expect("extra fields decode");
    json!({
        "description": "Every frame of protocol v1: `hex` is the exact MessagePack envelope, `decoded` its meaning (bin fields as hex). Forward-compatibility vectors follow.",
        "vectors": frames,
        "forward_compat": [
            {"name": "unknown_frame_type", "description": "decodes to Unsupported{type_name}; answer Error{unsupported_frame} and keep the connection", "hex": hex::encode(&unknown_type), "expect": {"unsupported_type": "ping2", "seq": 9}},
            {"name": "unknown_fields", "description": "unknown fields in envelope and body are ignored", "hex": hex::encode(&extra_fields), "expect": {"decoded": meaning(&extra_env)}}
        ]
    })
}

fn intent_vector(
    name: &str,
    description: &str,
    signed: &SignedIntent,
    ctx: Value,
    expect: Value,
) -> Value {
    let env = Envelope::new(1, 0, Frame::Intent(signed.clone()));
    let bytes = encode(&env, &Limits::default()).expect("encode intent frame");
    let payload = signed
        .peek_payload()
        .ok()
        .map(|p| serde_json::to_value(p).expect("payload json"));
    json!({
        "name": name,
        "description": description,
        "frame_hex": hex::encode(&bytes),
        "kid": signed.kid,
        "payload_hex": hex::encode(&signed.payload),
        "signature_hex": hex::encode(&signed.signature),
        "signing_input_hex": hex::encode(signed.signing_input()),
        "payload": payload,
        "context": ctx,
        "expect": expect,
    })
}

fn ctx(applied: Option<u64>, max_payload: usize) -> Value {
    json!({"cluster_id": CLUSTER_ID, "org": ORG, "now": NOW, "clock_skew_secs": 60, "applied_version": applied, "max_payload_bytes": max_payload})
}

/// Builds the verify context a vector describes.
pub fn verify_context(c: &Value) -> VerifyContext<'_> {
    let mut v = VerifyContext::new(
        c["cluster_id"].as_str().expect("cluster_id"),
        c["now"].as_i64().expect("now"),
    )
    .with_org(c["org"].as_str().expect("org"))
    .with_applied_version(c["applied_version"].as_u64());
    v.clock_skew_secs = c["clock_skew_secs"].as_i64().expect("skew");
    v.max_payload_bytes = c["max_payload_bytes"].as_u64().expect("max") as usize;
    v
}

pub fn intents() -> Value {
    let k = hub_key();
    let max = Limits::default().max_intent_payload_bytes;
    let ok = |c: RejectionCode| json!({"rejected": c.as_str()});
    let valid = k.sign(&apply_payload(7)).expect("sign");
    let mut bad_sig = valid.clone();
    bad_sig.signature[0] ^= 0x01;
    let mut tampered = valid.clone();
    let last = tampered.payload.len() - 1;
    tampered.payload[last] ^= 0x01;
    let mut foreign = apply_payload(7);
    foreign.cluster_id = "c-00000000".into();
    let mut expired = apply_payload(7);
    expired.issued_at = NOW - 7200;
    expired.expires_at = NOW - 61;
    let mut within_skew = apply_payload(7);
    within_skew.issued_at = NOW - 3600;
    within_skew.expires_at = NOW - 30;
    let mut future = apply_payload(7);
    future.issued_at = NOW + 120;
    future.expires_at = NOW + 3720;
    let mut v2 = apply_payload(7);
    v2.v = 2;
    let delete = payload(8, IntentAction::Delete);
    let malformed =
        k.sign_bytes(rmp_serde::to_vec_named(&json!({"v": 1, "intent_id": "x"})).expect("encode"));
    let vectors = vec![
        intent_vector(
            "valid_apply",
            "apply intent; nothing applied yet",
            &valid,
            ctx(None, max),
            json!("ok"),
        ),
        intent_vector(
            "valid_delete",
            "delete intent newer than the applied version",
            &k.sign(&delete).expect("sign"),
            ctx(Some(7), max),
            json!("ok"),
        ),
        intent_vector(
            "valid_rotated_key",
            "signed by the second key of the ring",
            &rotated_key().sign(&apply_payload(7)).expect("sign"),
            ctx(Some(6), max),
            json!("ok"),
        ),
        intent_vector(
            "valid_within_skew",
            "expired 30 s ago, inside the 60 s skew allowance",
            &k.sign(&within_skew).expect("sign"),
            ctx(None, max),
            json!("ok"),
        ),
        intent_vector(
            "bad_signature",
            "first signature byte flipped",
            &bad_sig,
            ctx(None, max),
            ok(RejectionCode::BadSignature),
        ),
        intent_vector(
            "bad_signature_tampered_payload",
            "payload changed after signing",
            &tampered,
            ctx(None, max),
            ok(RejectionCode::BadSignature),
        ),
        intent_vector(
            "unknown_key",
            "signed by a key not in the ring",
            &stranger_key().sign(&apply_payload(7)).expect("sign"),
            ctx(None, max),
            ok(RejectionCode::UnknownKey),
        ),
        intent_vector(
            "foreign_cluster",
            "intent for another cluster",
            &k.sign(&foreign).expect("sign"),
            ctx(None, max),
            ok(RejectionCode::ForeignCluster),
        ),
        intent_vector(
            "expired",
            "expired 61 s ago, beyond the 60 s skew",
            &k.sign(&expired).expect("sign"),
            ctx(None, max),
            ok(RejectionCode::Expired),
        ),
        intent_vector(
            "not_yet_valid",
            "issued 120 s in the future",
            &k.sign(&future).expect("sign"),
            ctx(None, max),
            ok(RejectionCode::NotYetValid),
        ),
        intent_vector(
            "replayed_version",
            "version 7 when 7 is already applied",
            &valid,
            ctx(Some(7), max),
            ok(RejectionCode::Replayed),
        ),
        intent_vector(
            "oversized",
            "payload larger than max_payload_bytes (64 here)",
            &valid,
            ctx(None, 64),
            ok(RejectionCode::Oversized),
        ),
        intent_vector(
            "unsupported_version",
            "payload format version 2",
            &k.sign(&v2).expect("sign"),
            ctx(None, max),
            ok(RejectionCode::UnsupportedVersion),
        ),
        intent_vector(
            "malformed_payload",
            "correctly signed bytes that are not an IntentPayload",
            &malformed,
            ctx(None, max),
            ok(RejectionCode::Malformed),
        ),
    ];
    json!({
        "description": "Signed intents. Verify with the keys below in the order of docs/protocol.md: size, kid, signature over context || payload, payload decode and version, cluster/org, times with skew, replay.",
        "signing_context_hex": hex::encode(INTENT_SIGNING_CONTEXT),
        "keys": [key_json(&k), key_json(&rotated_key())],
        "untrusted_keys": [key_json(&stranger_key())],
        "vectors": vectors,
    })
}

pub fn decode_errors() -> Value {
    let hello = Envelope::new(
        1,
        0,
        Frame::Hello(Hello {
            agent_version: "0.1.0".into(),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }),
    );
    let bytes = encode(&hello, &Limits::default()).expect("encode");
    let mut v2 = hello.clone();
    v2.v = 2;
    let v2_bytes = rmp_serde::to_vec_named(&v2).expect("encode");
    let mut trailing = bytes.clone();
    trailing.push(0xc0);
    // A map of one entry whose value is a str32 header claiming 4 GiB with nothing behind it.
    let mut big_bin = vec![0x81, 0xa4];
    big_bin.extend_from_slice(b"body");
    big_bin.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff]);
    let e = |name: &str, description: &str, bytes: &[u8], max: usize, code: ErrorCode| json!({"name": name, "description": description, "hex": hex::encode(bytes), "max_frame_bytes": max, "expect_error": code.as_str()});
    json!({
        "description": "Frames that must be refused with the given Error code (and never crash or allocate the claimed size).",
        "vectors": [
            e("oversized", "a valid hello, but max_frame_bytes is 16", &bytes, 16, ErrorCode::FrameTooLarge),
            e("unknown_version", "envelope v = 2", &v2_bytes, limits::MAX_FRAME_BYTES, ErrorCode::UnsupportedVersion),
            e("unknown_version_new_body", "envelope v = 7 whose body is not a v1 frame: still unsupported_version", &rmp_serde::to_vec_named(&json!({"ack": 0, "body": [1, 2], "seq": 1, "v": 7})).expect("encode"), limits::MAX_FRAME_BYTES, ErrorCode::UnsupportedVersion),
            e("bin_as_int_array", "intent whose payload is an array of integers instead of bin", &rmp_serde::to_vec_named(&json!({"ack": 0, "body": {"type": "intent", "kid": "6011e6856c1ac4eb", "payload": [1, 2, 3], "signature": [4, 5, 6]}, "seq": 1, "v": 1})).expect("encode"), limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
            e("truncated", "a valid hello missing its last byte", &bytes[..bytes.len() - 1], limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
            e("trailing_bytes", "a valid hello followed by a nil", &trailing, limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
            e("huge_claimed_length", "a str32 claiming 4 GiB in a 11-byte frame", &big_bin, limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
            e("not_a_map", "a MessagePack array", &[0x93, 0x01, 0x02, 0x03], limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
            e("missing_type", "body without type", &rmp_serde::to_vec_named(&json!({"ack": 0, "body": {"reason": "x"}, "seq": 1, "v": 1})).expect("encode"), limits::MAX_FRAME_BYTES, ErrorCode::MalformedFrame),
        ]
    })
}

pub fn join_token() -> Value {
    let issuer =
        JoinTokenIssuer::from_seed(&seed("vworkspace test vector join key")).expect("issuer");
    let claims = JoinClaims {
        iss: "https://hub.example".into(),
        aud: JOIN_TOKEN_AUDIENCE.into(),
        hub_url: "https://hub.example:8443".into(),
        ca_sha256: ca_sha256_hex(b"not a real certificate, only bytes to hash"),
        cluster: "office-berlin".into(),
        org: ORG.into(),
        jti: "6f1d2c3b-4a59-4e68-8f7a-0b1c2d3e4f50".into(),
        iat: NOW - 60,
        exp: NOW + 3540,
    };
    let token = issuer.issue(&claims).expect("issue");
    let _ = pkcs8_from_seed;
    json!({
        "description": "A join token (EdDSA JWT, header {alg: EdDSA, typ: JWT, kid}). Verify at `now` with the key below.",
        "key": {"kid": issuer.kid(), "public_key_hex": hex::encode(issuer.public_key().as_bytes())},
        "now": NOW,
        "token": token.expose_secret(),
        "claims": serde_json::to_value(&claims).expect("claims"),
    })
}

/// Proofs of possession for `POST /v1/recover` (section 4.2). The certificate
/// and CSR enter the signing input only through their SHA-256, so the vectors
/// carry the digests and the raw Ed25519 public key of the certificate.
pub fn recovery() -> Value {
    use vworkspace_protocol::recovery::{self, RECOVERY_CONTEXT};
    let key = pkcs8_from_seed(&seed("vworkspace test vector cluster key"));
    let stranger = pkcs8_from_seed(&seed("vworkspace test vector stolen key"));
    let public = recovery::ed25519_public_key(&key).expect("public key");
    let cert = b"DER of the expired client certificate (only hashed)".as_slice();
    let csr = b"DER of the CSR for the fresh key (only hashed)".as_slice();
    let other_csr = b"DER of another CSR (only hashed)".as_slice();
    let sha = |b: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, b));
    let input = recovery::signing_input(cert, csr);
    let case = |name: &str, signed_with: &[u8], signed_over: &[u8], valid: bool| {
        let proof = recovery::sign_proof(signed_with, signed_over).expect("sign");
        json!({"name": name, "proof_hex": hex::encode(proof), "valid": valid})
    };
    json!({
        "description": "Proof of possession of a recovery request: Ed25519 (or ECDSA P-256 SHA-256, DER) signature by the expired certificate's key over context || SHA-256(certificate DER) || SHA-256(CSR DER). Check each proof against signing_input_hex and public_key_hex.",
        "context_hex": hex::encode(RECOVERY_CONTEXT),
        "certificate_sha256_hex": sha(cert),
        "csr_sha256_hex": sha(csr),
        "signing_input_hex": hex::encode(&input),
        "public_key_hex": hex::encode(&public),
        "proofs": [
            case("valid", &key, &input, true),
            case("signed over another CSR", &key, &recovery::signing_input(cert, other_csr), false),
            case("signed by another key", &stranger, &input, false),
        ],
        "request_example": {
            "certificate_pem": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n",
            "proof_hex": "…",
        },
        "errors": [
            {"code": "recovery_window_passed", "http": vworkspace_protocol::enrollment::EnrollErrorCode::RecoveryWindowPassed.http_status()},
            {"code": "recovery_refused", "http": vworkspace_protocol::enrollment::EnrollErrorCode::RecoveryRefused.http_status()},
            {"code": "cluster_revoked", "http": vworkspace_protocol::enrollment::EnrollErrorCode::ClusterRevoked.http_status()},
        ],
        "default_recovery_window_secs": recovery::DEFAULT_RECOVERY_WINDOW_SECS,
    })
}

/// Chunked `hello` and `inventory` frames, the negotiated window, and the
/// receiver's assembly rules as step-by-step cases.
pub fn chunks() -> Value {
    let app = |i: u64| {
        ObjectRef::new(
            ObjectKind::ApplicationInstance,
            "team-a",
            format!("app-{i}"),
        )
    };
    let applied: Vec<AppliedVersion> = (1..=3)
        .map(|i| AppliedVersion {
            object: app(i),
            version: i,
        })
        .collect();
    let hellos: Vec<Value> = chunk::split(applied, 2)
        .into_iter()
        .map(|(c, part)| {
            frame_vector(
                &format!("hello_chunk_{}", c.index),
                if c.index == 0 {
                    "agent -> hub, first of a chunked hello, offering an in-flight window of 256; the hub answers welcome after it"
                } else {
                    "agent -> hub, the next hello chunk, sent right after welcome"
                },
                Envelope::new(u64::from(c.index) + 1, if c.index == 0 { 0 } else { 1 }, Frame::Hello(Hello {
                    agent_version: "0.2.0".into(),
                    capabilities: vec!["status-digest".into()],
                    applied: part,
                    max_in_flight: (c.index == 0).then_some(256),
                    chunk: Some(c),
                    digest_buckets: false,
                })),
            )
        })
        .collect();
    let welcome = frame_vector(
        "welcome_negotiated",
        "hub -> agent: the window is min(hub cap 1024, agent offer 256); the hub assembles up to 16 chunks",
        Envelope::new(
            1,
            1,
            Frame::Welcome(Welcome {
                cluster_id: CLUSTER_ID.into(),
                org: ORG.into(),
                server_time: NOW,
                heartbeat_secs: 20,
                idle_timeout_secs: 60,
                max_frame_bytes: 1_048_576,
                max_in_flight: 256,
                signing_keys: vec![],
                recovery_window_secs: None,
                ca_bundle_pem: None,
                max_chunks: Some(limits::MAX_CHUNKS),
                digest_buckets: None,
            }),
        ),
    );
    let entries: Vec<InventoryEntry> = (1..=5)
        .map(|i| InventoryEntry {
            object: app(i),
            version: i,
            status_hash: format!("{i:016x}"),
        })
        .collect();
    let inventory: Vec<Value> = chunk::split(entries, 2)
        .into_iter()
        .map(|(c, part)| {
            frame_vector(
                &format!("inventory_chunk_{}", c.index),
                "agent -> hub, one of three inventory chunks; the hub reconciles after the last",
                Envelope::new(
                    u64::from(c.index) + 3,
                    1,
                    Frame::Inventory(Inventory {
                        objects: part,
                        chunk: Some(c),
                        buckets: None,
                    }),
                ),
            )
        })
        .collect();
    let c = |index: u32, count: u32| json!({"index": index, "count": count});
    json!({
        "description": "Chunked hello and inventory frames (section 7, chunking) and the negotiated in-flight window. `frames` decode and re-encode like frames.json. Each `assembly` case feeds one receiver (max_chunks, max_entries) the steps in order (`chunk` null: an unchunked frame); `expect` is `pending`, `{complete: entries}` or `{error: kind}` (wire code chunk_error); after an error the set is dropped.",
        "frames": hellos.into_iter().chain([welcome]).chain(inventory).collect::<Vec<_>>(),
        "assembly": [
            {"name": "in_order", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 3), "entries": [1, 2], "expect": "pending"},
                {"chunk": c(1, 3), "entries": [3, 4], "expect": "pending"},
                {"chunk": c(2, 3), "entries": [5], "expect": {"complete": [1, 2, 3, 4, 5]}},
                {"chunk": null, "entries": [6], "expect": {"complete": [6]}},
            ]},
            {"name": "single_chunk", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 1), "entries": [1], "expect": {"complete": [1]}},
            ]},
            {"name": "count_zero", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 0), "entries": [], "expect": {"error": "invalid"}},
            ]},
            {"name": "index_beyond_count", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(3, 3), "entries": [], "expect": {"error": "invalid"}},
            ]},
            {"name": "too_many_chunks", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 17), "entries": [1], "expect": {"error": "too_many_chunks"}},
            ]},
            {"name": "endless_chunks", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 4294967295_u32), "entries": [1], "expect": {"error": "too_many_chunks"}},
            ]},
            {"name": "skipped_index", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 3), "entries": [1], "expect": "pending"},
                {"chunk": c(2, 3), "entries": [3], "expect": {"error": "out_of_order"}},
            ]},
            {"name": "starts_mid_set", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(1, 3), "entries": [1], "expect": {"error": "out_of_order"}},
            ]},
            {"name": "count_changes", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 3), "entries": [1], "expect": "pending"},
                {"chunk": c(1, 4), "entries": [2], "expect": {"error": "out_of_order"}},
            ]},
            {"name": "unchunked_interrupts", "max_chunks": 16, "max_entries": 100, "steps": [
                {"chunk": c(0, 2), "entries": [1], "expect": "pending"},
                {"chunk": null, "entries": [2], "expect": {"error": "interrupted"}},
                {"chunk": c(0, 1), "entries": [3], "expect": {"complete": [3]}},
            ]},
            {"name": "too_many_entries", "max_chunks": 16, "max_entries": 3, "steps": [
                {"chunk": c(0, 2), "entries": [1, 2], "expect": "pending"},
                {"chunk": c(1, 2), "entries": [3, 4], "expect": {"error": "too_many_entries"}},
            ]},
        ],
        "defaults": {
            "max_chunks": limits::MAX_CHUNKS,
            "max_entries": limits::MAX_CHUNKED_ENTRIES,
            "timeout_secs": limits::CHUNK_TIMEOUT_SECS,
            "legacy_in_flight": 32,
        },
    })
}

/// The objects of the bucketed-digest worked example.
pub fn digest_entries() -> Vec<InventoryEntry> {
    let e = |kind, ns: &str, name: &str, version, hash: &str| InventoryEntry {
        object: ObjectRef::new(kind, ns, name),
        version,
        status_hash: hash.into(),
    };
    vec![
        e(ObjectKind::Cluster, "", "edge-1", 0, "0c1d2e3f40516273"),
        e(
            ObjectKind::ApplicationInstance,
            "team-a",
            "nextcloud",
            7,
            "9f2c4e1ab0d37c55",
        ),
        e(
            ObjectKind::ApplicationInstance,
            "team-a",
            "wiki",
            3,
            "1b2c3d4e5f607182",
        ),
        e(
            ObjectKind::ApplicationInstance,
            "team-b",
            "nextcloud",
            12,
            "aa00bb11cc22dd33",
        ),
        e(
            ObjectKind::Operation,
            "team-a",
            "backup-20270115",
            1,
            "77e1f0c2d3b4a596",
        ),
    ]
}

/// Bucketed digests (section 7, *Bucketed digests*).
pub fn digest() -> Value {
    use vworkspace_protocol::digest::{self as d, DigestError};
    let entries = digest_entries();
    let count = d::MIN_BUCKETS;
    let sha = |b: &[u8]| hex::encode(ring_sha256(b));
    let objects: Vec<Value> = entries
        .iter()
        .map(|e| {
            let o = &e.object;
            let preimage = [
                o.kind.as_str().as_bytes(),
                b"\0",
                o.namespace.as_bytes(),
                b"\0",
                o.name.as_bytes(),
            ]
            .concat();
            json!({
                "object": o,
                "preimage_hex": hex::encode(&preimage),
                "sha256_hex": sha(&preimage),
                "bucket_16": d::bucket_of(o, 16),
                "bucket_1024": d::bucket_of(o, 1024),
            })
        })
        .collect();
    let hashes = d::bucket_hashes(&entries, count);
    let mut buckets = Vec::new();
    for b in 0..count {
        let mut mine: Vec<&InventoryEntry> = entries
            .iter()
            .filter(|e| d::bucket_of(&e.object, count) == b)
            .collect();
        mine.sort_by(|x, y| {
            (x.object.kind.as_str(), &x.object.namespace, &x.object.name).cmp(&(
                y.object.kind.as_str(),
                &y.object.namespace,
                &y.object.name,
            ))
        });
        let text: Vec<u8> = mine.iter().flat_map(|e| d::entry_line(e)).collect();
        buckets.push(json!({
            "bucket": b,
            "entries": mine.iter().map(|e| &e.object).collect::<Vec<_>>(),
            "hashed_hex": hex::encode(&text),
            "hash_hex": hex::encode(&hashes[b as usize]),
        }));
    }
    let summary = d::summarize(&entries, count);
    let changed = {
        let mut c = entries.clone();
        c[1].status_hash = "0000000000000000".into();
        c
    };
    let differing = d::differing_buckets(&summary.hashes, &d::bucket_hashes(&changed, count));
    let frames = vec![
        frame_vector(
            "hello_summary_mode",
            "agent -> hub, a reconnect to a hub that announced digest_buckets earlier in this process: no applied, the versions come with the requested buckets",
            Envelope::new(
                1,
                0,
                Frame::Hello(Hello {
                    agent_version: "0.2.0".into(),
                    capabilities: vec![
                        "status-digest".into(),
                        "renew-cert".into(),
                        "delete".into(),
                    ],
                    applied: vec![],
                    max_in_flight: Some(256),
                    chunk: None,
                    digest_buckets: true,
                }),
            ),
        ),
        frame_vector(
            "welcome_digest_buckets",
            "hub -> agent: the hub compares bucketed digests of up to 32768 buckets",
            Envelope::new(
                1,
                1,
                Frame::Welcome(Welcome {
                    cluster_id: CLUSTER_ID.into(),
                    org: ORG.into(),
                    server_time: NOW,
                    heartbeat_secs: 20,
                    idle_timeout_secs: 60,
                    max_frame_bytes: 1_048_576,
                    max_in_flight: 256,
                    signing_keys: vec![],
                    recovery_window_secs: None,
                    ca_bundle_pem: None,
                    max_chunks: Some(limits::MAX_CHUNKS),
                    digest_buckets: Some(d::MAX_BUCKETS),
                }),
            ),
        ),
        frame_vector(
            "inventory_summary",
            "agent -> hub, instead of inventory: the worked example's 16 bucket hashes",
            Envelope::new(2, 1, Frame::InventorySummary(summary.clone())),
        ),
        frame_vector(
            "resync_request_buckets",
            "hub -> agent: the buckets whose hash differs from the hub's view (here: team-a/nextcloud's status changed)",
            Envelope::new(
                2,
                2,
                Frame::ResyncRequest(ResyncRequest {
                    reason: Some("digest buckets differ from the hub's view".into()),
                    objects: vec![],
                    buckets: differing.clone(),
                }),
            ),
        ),
        frame_vector(
            "inventory_buckets",
            "agent -> hub: every entry of the requested buckets, naming them",
            Envelope::new(
                3,
                2,
                Frame::Inventory(Inventory {
                    objects: d::entries_in(&changed, &differing, count),
                    chunk: None,
                    buckets: Some(differing.clone()),
                }),
            ),
        ),
    ];
    let kind = |e: DigestError| match e {
        DigestError::BucketCount { .. } => "bucket_count",
        DigestError::HashCount { .. } => "hash_count",
        DigestError::HashLength { .. } => "hash_length",
        DigestError::BucketList { .. } => "bucket_list",
        _ => "other",
    };
    let summary_case = |name: &str, count: u32, hashes: Vec<Vec<u8>>| {
        let s = InventorySummary {
            bucket_count: count,
            hashes,
        };
        let expect = match d::check_summary(&s, d::MAX_BUCKETS) {
            Ok(()) => json!("ok"),
            Err(e) => json!({"error": kind(e)}),
        };
        json!({"name": name, "bucket_count": count, "hash_lengths": s.hashes.iter().map(Vec::len).collect::<Vec<_>>(), "expect": expect})
    };
    let list_case = |name: &str, buckets: Vec<u32>, count: u32| {
        let expect = match d::check_buckets(&buckets, count) {
            Ok(()) => json!("ok"),
            Err(e) => json!({"error": kind(e)}),
        };
        json!({"name": name, "buckets": buckets, "bucket_count": count, "expect": expect})
    };
    let counts: Vec<Value> = [0usize, 100, 128, 129, 10_000, 50_000, 1_000_000]
        .iter()
        .map(|&n| json!({"objects": n, "max": d::MAX_BUCKETS, "count": d::bucket_count_for(n, d::MAX_BUCKETS)}))
        .chain([json!({"objects": 10_000, "max": 1000, "count": d::bucket_count_for(10_000, 1000)})])
        .collect();
    json!({
        "description": "Bucketed digests (section 7, bucketed digests). `objects`: the bucket of each object (preimage kind 0x00 namespace 0x00 name, its SHA-256, the first 4 bytes big-endian modulo the count). `buckets`: for the worked example with 16 buckets, the bytes hashed per bucket (entry lines sorted bytewise by kind, namespace, name) and the hash (first 16 bytes of SHA-256). `frames` decode and re-encode like frames.json (hashes shown as hex). `summaries` and `bucket_lists` must be accepted (`ok`) or refused with Error{digest_error} (`kind` names the rule) by a receiver accepting up to 32768 buckets. `bucket_count_for` is the reference agent's choice (informative).",
        "limits": {
            "min_buckets": d::MIN_BUCKETS,
            "max_buckets": d::MAX_BUCKETS,
            "hash_len": d::BUCKET_HASH_LEN,
            "max_requested_buckets": d::MAX_REQUESTED_BUCKETS,
            "objects_per_bucket": d::OBJECTS_PER_BUCKET,
        },
        "objects": objects,
        "bucket_count": count,
        "buckets": buckets,
        "frames": frames,
        "summaries": [
            summary_case("valid", 16, vec![vec![0; 16]; 16]),
            summary_case("count_not_power_of_two", 24, vec![vec![0; 16]; 24]),
            summary_case("count_below_minimum", 8, vec![vec![0; 16]; 8]),
            summary_case("count_above_maximum", 65_536, vec![]),
            summary_case("too_few_hashes", 16, vec![vec![0; 16]; 15]),
            summary_case("hash_too_long", 16, { let mut h = vec![vec![0; 16]; 16]; h[2] = vec![0; 20]; h }),
            summary_case("hash_empty", 16, { let mut h = vec![vec![0; 16]; 16]; h[0] = vec![]; h }),
        ],
        "bucket_lists": [
            list_case("valid", vec![0, 5, 15], 16),
            list_case("empty", vec![], 16),
            list_case("index_at_count", vec![16], 16),
            list_case("repeated", vec![3, 3], 16),
            list_case("descending", vec![5, 2], 16),
            list_case("longer_than_count", (0..17).collect(), 16),
            list_case("longer_than_max_requested", (0..(d::MAX_REQUESTED_BUCKETS as u32 + 1)).collect(), d::MAX_BUCKETS),
        ],
        "bucket_count_for": counts,
        "error": {"code": ErrorCode::DigestError.as_str(), "fatal": true, "close_code": ErrorCode::DigestError.close_code()},
    })
}

fn ring_sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

/// Every vector file: name and pretty JSON text (with a trailing newline).
pub fn all() -> Vec<(&'static str, String)> {
    [
        ("frames.json", frames()),
        ("intents.json", intents()),
        ("decode_errors.json", decode_errors()),
        ("join_token.json", join_token()),
        ("recovery.json", recovery()),
        ("chunks.json", chunks()),
        ("digest.json", digest()),
    ]
    .into_iter()
    .map(|(n, v)| (n, serde_json::to_string_pretty(&v).expect("json") + "\n"))
    .collect()
}
