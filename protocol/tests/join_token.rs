//! Join tokens: issue, verify, unverified parse, and secrecy.

use vworkspace_protocol::enrollment::{
    EnrollError, EnrollErrorCode, EnrollRequest, EnrollResponse,
};
use vworkspace_protocol::join_token::JoinClaims;
use vworkspace_protocol::*;

const NOW: i64 = 1_800_000_000;

fn claims() -> JoinClaims {
    JoinClaims {
        iss: "https://hub.example".into(),
        aud: JOIN_TOKEN_AUDIENCE.into(),
        hub_url: "https://hub.example:8443".into(),
        ca_sha256: ca_sha256_hex(b"ca der"),
        cluster: "edge-7".into(),
        org: "acme".into(),
        jti: "11111111-2222-4333-8444-555555555555".into(),
        iat: NOW,
        exp: NOW + 3600,
    }
}

fn issuer() -> JoinTokenIssuer {
    JoinTokenIssuer::from_seed(&[8; 32]).unwrap()
}

fn ring_of(i: &JoinTokenIssuer) -> KeyRing {
    let mut r = KeyRing::new();
    r.insert(i.public_key());
    r
}

#[test]
fn issued_token_verifies_and_parses_with_the_same_claims() {
    let i = issuer();
    let token = i.issue(&claims()).unwrap();
    let verified = verify_join_token(token.expose_secret(), &ring_of(&i), NOW + 10).unwrap();
    assert_eq!(verified.claims(), &claims());
    let parsed = JoinToken::parse(token.expose_secret(), NOW + 10).unwrap();
    assert_eq!(parsed.claims(), &claims());
    assert_eq!(
        parsed.claims().enroll_url(),
        "https://hub.example:8443/v1/enroll"
    );
    let header = jsonwebtoken::decode_header(token.expose_secret()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(i.kid().as_str()));
}

#[test]
fn generated_issuer_round_trips_through_pkcs8() {
    let (i, der) = JoinTokenIssuer::generate().unwrap();
    let again = JoinTokenIssuer::from_pkcs8(&der).unwrap();
    assert_eq!(i.kid(), again.kid());
    let token = again.issue(&claims()).unwrap();
    assert!(verify_join_token(token.expose_secret(), &ring_of(&i), NOW).is_ok());
}

#[test]
fn expiry_is_checked_with_skew_on_both_sides() {
    let i = issuer();
    let raw = i.issue(&claims()).unwrap().expose_secret().to_owned();
    let exp = claims().exp;
    assert!(JoinToken::parse(&raw, exp + 60).is_ok(), "within skew");
    let err = JoinToken::parse(&raw, exp + 61).unwrap_err();
    assert!(matches!(err, JoinTokenError::Expired { .. }), "{err}");
    assert_eq!(err.enroll_code(), EnrollErrorCode::TokenExpired);
    let err = verify_join_token(&raw, &ring_of(&i), exp + 61).unwrap_err();
    assert!(matches!(err, JoinTokenError::Expired { .. }), "{err}");
    let err = JoinToken::parse(&raw, NOW - 61).unwrap_err();
    assert!(matches!(err, JoinTokenError::NotYetValid { .. }), "{err}");
}

#[test]
fn wrong_key_tampering_and_bad_claims_are_refused() {
    let i = issuer();
    let other = JoinTokenIssuer::from_seed(&[9; 32]).unwrap();
    let raw = i.issue(&claims()).unwrap().expose_secret().to_owned();
    assert!(matches!(
        verify_join_token(&raw, &ring_of(&other), NOW),
        Err(JoinTokenError::UnknownKey(_))
    ));
    // Same kid, different key material: the signature fails.
    let mut forged = claims();
    forged.cluster = "someone-else".into();
    let forged_raw = other.issue(&forged).unwrap().expose_secret().to_owned();
    let parts: Vec<&str> = forged_raw.split('.').collect();
    let orig: Vec<&str> = raw.split('.').collect();
    let spliced = format!("{}.{}.{}", orig[0], parts[1], orig[2]);
    let err = verify_join_token(&spliced, &ring_of(&i), NOW).unwrap_err();
    assert_eq!(err, JoinTokenError::BadSignature);
    assert_eq!(err.enroll_code(), EnrollErrorCode::TokenInvalid);
    let mut wrong_aud = claims();
    wrong_aud.aud = "something-else".into();
    assert_eq!(
        i.issue(&wrong_aud).unwrap_err().enroll_code(),
        EnrollErrorCode::TokenAudience
    );
    let mut long = claims();
    long.exp = long.iat + 24 * 3600 + 1;
    assert!(matches!(
        i.issue(&long),
        Err(JoinTokenError::InvalidClaim { claim: "exp", .. })
    ));
    let mut http = claims();
    http.hub_url = "http://hub.example".into();
    assert!(matches!(
        i.issue(&http),
        Err(JoinTokenError::InvalidClaim {
            claim: "hub_url",
            ..
        })
    ));
    for garbage in ["", "a.b", "a.b.c", "x.y.z.w", &"a".repeat(10_000)] {
        assert!(JoinToken::parse(garbage, NOW).is_err(), "{garbage:.20}");
        assert!(verify_join_token(garbage, &ring_of(&i), NOW).is_err());
    }
}

#[test]
fn token_never_appears_in_debug_display_or_errors() {
    let i = issuer();
    let token = i.issue(&claims()).unwrap();
    let raw = token.expose_secret().to_owned();
    let signature_part = raw.rsplit('.').next().unwrap().to_owned();
    let shown = format!(
        "{token:?} | {token} | {:?}",
        JoinToken::parse(&raw, NOW).unwrap()
    );
    assert_eq!(
        format!("{token}"),
        "JoinToken(jti=11111111-2222-4333-8444-555555555555, cluster=edge-7)"
    );
    assert!(!shown.contains(&signature_part), "{shown}");
    assert!(!shown.contains(&raw[..20]), "{shown}");
    // Errors for the same token must not echo it either.
    let errs = [
        JoinToken::parse(&raw, NOW + 10_000).unwrap_err(),
        verify_join_token(&raw, &KeyRing::new(), NOW).unwrap_err(),
        verify_join_token(&format!("{raw}x"), &ring_of(&i), NOW).unwrap_err(),
    ];
    for e in errs {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&signature_part), "{text}");
    }
    let req = EnrollRequest {
        token: raw.clone(),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
    };
    let dbg = format!("{req:?}");
    assert!(
        !dbg.contains(&signature_part) && dbg.contains("redacted"),
        "{dbg}"
    );
}

#[test]
fn enrollment_json_shapes() {
    let req: EnrollRequest =
        serde_json::from_str(r#"{"token":"t","csr_pem":"c","extra":1}"#).unwrap();
    assert_eq!(req.token, "t");
    let resp = EnrollResponse {
        cluster_id: "c-1".into(),
        org: "acme".into(),
        certificate_pem: "cert".into(),
        ca_bundle_pem: "ca".into(),
        signing_keys: vec![
            IntentSigner::from_seed(&[1; 32])
                .unwrap()
                .public_key()
                .to_info(),
        ],
        tunnel_url: "wss://hub.example:8443/v1/tunnel".into(),
    };
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        v["signing_keys"][0]["public_key_hex"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(serde_json::from_value::<EnrollResponse>(v).unwrap(), resp);
    let e: EnrollError =
        serde_json::from_str(r#"{"code":"token_reused","message":"used"}"#).unwrap();
    assert_eq!(e.code, EnrollErrorCode::TokenReused);
    assert_eq!(e.code.http_status(), 409);
    let future: EnrollError =
        serde_json::from_str(r#"{"code":"brand_new_code","message":"?"}"#).unwrap();
    assert_eq!(future.code, EnrollErrorCode::Unknown);
    assert_eq!(
        serde_json::to_value(EnrollErrorCode::CsrInvalid).unwrap(),
        "csr_invalid"
    );
}
