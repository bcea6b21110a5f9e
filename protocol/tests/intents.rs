//! Signing, key rings and verification beyond the vectors.

use vworkspace_protocol::*;

fn payload(version: u64) -> IntentPayload {
    IntentPayload {
        v: 1,
        intent_id: "7d9b5b0e-3f0c-4a57-9a41-2e9f1b7c0d11".into(),
        cluster_id: "c-1".into(),
        org: "acme".into(),
        issued_at: 1000,
        expires_at: 2000,
        object: ObjectRef::new(ObjectKind::Operation, "team-a", "backup-1"),
        version,
        action: IntentAction::Apply {
            spec: serde_json::json!({"type": "Backup", "engine": "velero"}),
        },
    }
}

#[test]
fn kid_is_first_16_hex_of_sha256_of_raw_key() {
    let signer = IntentSigner::from_seed(&[9; 32]).unwrap();
    let raw = signer.public_key();
    let digest = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
    assert_eq!(signer.kid(), &hex::encode(digest.as_ref())[..16]);
    assert_eq!(key_id(raw.as_bytes()), signer.kid());
}

#[test]
fn rotation_old_and_new_keys_verify_until_old_is_removed() {
    let old = IntentSigner::from_seed(&[1; 32]).unwrap();
    let (new, pkcs8) = IntentSigner::generate().unwrap();
    let reloaded = IntentSigner::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(reloaded.kid(), new.kid());
    let mut ring =
        KeyRing::from_infos(&[old.public_key().to_info(), new.public_key().to_info()]).unwrap();
    let ctx = VerifyContext::new("c-1", 1500);
    let a = old.sign(&payload(1)).unwrap();
    let b = new.sign(&payload(2)).unwrap();
    assert_eq!(ring.verify(&a, &ctx).unwrap().kid, old.kid());
    assert_eq!(ring.verify(&b, &ctx).unwrap().payload, payload(2));
    ring.remove(old.kid());
    assert_eq!(
        ring.verify(&a, &ctx).unwrap_err(),
        Rejection::UnknownKey {
            kid: old.kid().into()
        }
    );
    assert!(ring.verify(&b, &ctx).is_ok());
}

#[test]
fn signature_covers_the_domain_prefix() {
    let signer = IntentSigner::from_seed(&[2; 32]).unwrap();
    let signed = signer.sign(&payload(1)).unwrap();
    let pk = signer.public_key();
    assert!(pk.verify(
        &[INTENT_SIGNING_CONTEXT, &signed.payload].concat(),
        &signed.signature
    ));
    assert!(
        !pk.verify(&signed.payload, &signed.signature),
        "a signature over the bare payload must not verify"
    );
}

#[test]
fn key_info_with_wrong_kid_is_refused() {
    let k = IntentSigner::from_seed(&[4; 32]).unwrap().public_key();
    let mut info = k.to_info();
    info.kid = "0000000000000000".into();
    assert!(matches!(
        KeyRing::from_infos([&info]),
        Err(KeyRingError::KidMismatch { .. })
    ));
    info.public_key_hex.truncate(10);
    assert!(KeyRing::from_infos([&info]).is_err());
}

#[test]
fn org_mismatch_is_a_foreign_cluster_and_short_signatures_are_bad() {
    let signer = IntentSigner::from_seed(&[5; 32]).unwrap();
    let mut ring = KeyRing::new();
    ring.insert(signer.public_key());
    let signed = signer.sign(&payload(1)).unwrap();
    let ctx = VerifyContext::new("c-1", 1500).with_org("other-org");
    let rejection = ring.verify(&signed, &ctx).unwrap_err();
    assert_eq!(rejection.code(), RejectionCode::ForeignCluster);
    // The message names the org mismatch, not the (equal) cluster ids twice.
    let message = rejection.to_string();
    assert!(
        message.contains("org")
            && message.contains("other-org")
            && message.contains(&payload(1).org),
        "{message}"
    );
    assert!(!message.contains(r#"this is "c-1""#), "{message}");
    let mut short = signed.clone();
    short.signature.truncate(63);
    assert_eq!(
        ring.verify(&short, &VerifyContext::new("c-1", 1500))
            .unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn rejection_outcome_carries_the_stable_code() {
    let r = Rejection::Replayed {
        version: 3,
        applied: 4,
    };
    match r.to_outcome() {
        IntentOutcome::Rejected { code, message } => {
            assert_eq!(code, "replayed");
            assert!(message.contains('3') && message.contains('4'), "{message}");
        }
        other => panic!("{other:?}"),
    }
    for c in RejectionCode::ALL {
        assert_eq!(RejectionCode::parse(c.as_str()), Some(*c));
    }
}

#[test]
fn debug_of_keys_and_intents_shows_no_key_material() {
    let signer = IntentSigner::from_seed(&[6; 32]).unwrap();
    let signed = signer.sign(&payload(1)).unwrap();
    let text = format!("{signer:?} {signed:?} {:?}", signer.public_key());
    assert!(text.contains(signer.kid()), "{text}");
    assert!(
        !text.contains(&hex::encode(signer.public_key().as_bytes())),
        "{text}"
    );
    assert!(
        !text.contains(&hex::encode(&signed.signature[..8])),
        "{text}"
    );
}
