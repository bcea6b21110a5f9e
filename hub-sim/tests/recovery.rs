//! `POST /v1/recover` against an in-process hub with 2 s certificates: an
//! expired certificate comes back with its key, once, within the window, and
//! never for a revoked cluster, an older certificate or a wrong proof.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Creds, TestAgent, enroll_cluster, new_csr, start_hub_with};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use vworkspace_protocol::recovery::{self, RecoverRequest, RecoverResponse};

/// Builds a recovery request for `creds`; `proof_csr` is the CSR the proof
/// signs (the real one unless a test forges it).
fn request(creds: &Creds, csr_pem: &str, proof_csr: &str) -> RecoverRequest {
    let cert = CertificateDer::from_pem_slice(creds.cert_pem.as_bytes()).unwrap();
    let csr = CertificateSigningRequestDer::from_pem_slice(proof_csr.as_bytes()).unwrap();
    let key = match PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k,
        _ => panic!("rcgen keys are PKCS#8"),
    };
    let proof = recovery::sign_proof(
        key.secret_pkcs8_der(),
        &recovery::signing_input(cert.as_ref(), csr.as_ref()),
    )
    .unwrap();
    RecoverRequest {
        certificate_pem: creds.cert_pem.clone(),
        csr_pem: csr_pem.to_owned(),
        proof_hex: hex::encode(proof),
    }
}

async fn post(hub: &hub_sim::RunningHub, body: &RecoverRequest) -> (u16, serde_json::Value) {
    let tls = common::tls_raw(hub.tls_addr, hub.hub.ca().cert_pem())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(recovery::RECOVER_PATH)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

fn code(v: &serde_json::Value) -> &str {
    v["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn an_expired_certificate_is_recovered_once_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| {
        c.client_cert_lifetime = Duration::from_secs(2);
        c.recovery_window = Duration::from_secs(600);
    })
    .await;
    let old = enroll_cluster(&hub, "edge-1", "acme").await;
    let a = TestAgent::connect(hub.tls_addr, &old, vec![]).await;
    assert_eq!(a.welcome.as_ref().unwrap().recovery_window_secs, Some(600));
    drop(a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        TestAgent::open(
            hub.tls_addr,
            &old.ca_pem,
            Some((&old.cert_pem, &old.key_pem))
        )
        .await
        .is_err(),
        "the tunnel takes the expired certificate"
    );

    // A proof over another CSR does not count.
    let (csr, key_pem) = new_csr();
    let (other_csr, _) = new_csr();
    let (status, body) = post(&hub, &request(&old, &csr, &other_csr)).await;
    assert_eq!((status, code(&body)), (403, "recovery_refused"), "{body}");

    let (status, body) = post(&hub, &request(&old, &csr, &csr)).await;
    assert_eq!(status, 200, "{body}");
    let resp: RecoverResponse = serde_json::from_value(body).unwrap();
    assert_eq!(resp.recovery_window_secs, 600);
    assert_eq!(resp.enrolled.cluster_id, "edge-1");
    let new = Creds {
        cert_pem: resp.enrolled.certificate_pem.clone(),
        key_pem,
        ca_pem: resp.enrolled.ca_bundle_pem.clone(),
        response: None,
    };
    let a = TestAgent::connect(hub.tls_addr, &new, vec![]).await;
    assert_eq!(a.welcome.as_ref().unwrap().cluster_id, "edge-1");

    // The old certificate is no longer the newest: a second recovery with it
    // (a thief holding the old key) is refused.
    let (csr2, _) = new_csr();
    let (status, body) = post(&hub, &request(&old, &csr2, &csr2)).await;
    assert_eq!((status, code(&body)), (403, "recovery_refused"), "{body}");
    let audit = hub.hub.store().audit_log(50).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.event == "recover" && r.outcome == "ok")
            .count(),
        1
    );
}

#[tokio::test]
async fn revoked_and_out_of_window_certificates_are_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| {
        c.client_cert_lifetime = Duration::from_secs(1);
        c.recovery_window = Duration::from_secs(2);
    })
    .await;
    let revoked = enroll_cluster(&hub, "edge-revoked", "acme").await;
    let late = enroll_cluster(&hub, "edge-late", "acme").await;
    hub.hub.revoke("edge-revoked").unwrap();
    let (csr, _) = new_csr();
    let (status, body) = post(&hub, &request(&revoked, &csr, &csr)).await;
    assert_eq!((status, code(&body)), (403, "cluster_revoked"), "{body}");

    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = post(&hub, &request(&late, &csr, &csr)).await;
    assert_eq!(
        (status, code(&body)),
        (403, "recovery_window_passed"),
        "{body}"
    );
}

#[tokio::test]
async fn a_hub_with_recovery_off_says_so_and_announces_no_window() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| c.recovery_window = Duration::ZERO).await;
    let creds = enroll_cluster(&hub, "edge-2", "acme").await;
    let a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    assert_eq!(a.welcome.as_ref().unwrap().recovery_window_secs, None);
    let (csr, _) = new_csr();
    let (status, body) = post(&hub, &request(&creds, &csr, &csr)).await;
    assert_eq!(
        (status, code(&body)),
        (403, "recovery_window_passed"),
        "{body}"
    );
}
