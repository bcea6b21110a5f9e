//! Join tokens and private keys never reach the logs or the audit log, even at
//! TRACE level and on every refusal path.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use vworkspace_protocol::{Frame, RenewCert};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The base64 body of a PEM block (what would leak if the PEM were logged).
fn pem_body(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn secrets_never_reach_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    let admin = hub.admin_client();
    let issued = admin
        .post(
            "/v1/tokens",
            &serde_json::json!({"cluster": "edge-1", "org": "acme"}),
        )
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let creds = enroll(hub.tls_addr, &ca, &token).await.expect("enrolls");
    // Refusal paths that carry the token.
    assert!(enroll(hub.tls_addr, &ca, &token).await.is_err());
    let tampered = format!("{token}x");
    assert!(enroll(hub.tls_addr, &ca, &tampered).await.is_err());
    let body = serde_json::json!({"token": token, "csr_pem": "garbage"});
    enroll_raw(hub.tls_addr, &ca, serde_json::to_vec(&body).unwrap()).await;
    // A wrong admin token is refused without echoing it.
    let wrong = hub_sim::admin_client::AdminClient::new(hub.admin_addr, token.clone());
    assert!(wrong.get("/v1/clusters").await.is_err());

    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let (csr, renewed_key) = new_csr();
    agent
        .send(Frame::RenewCert(RenewCert { csr_pem: csr }))
        .await;
    assert!(matches!(agent.recv().await.body, Frame::CertIssued(_)));
    hub.hub.rotate_keys().unwrap();
    let _ = agent.try_recv().await;

    let ca_key = hub.hub.store().meta_get("ca.key_pem").unwrap().unwrap();
    let intent_keys = hub.hub.store().keys(hub_sim::keys::INTENT).unwrap();
    let join_keys = hub.hub.store().keys(hub_sim::keys::JOIN).unwrap();
    let admin_token = hub.admin_token.clone();
    let audit = serde_json::to_string(&hub.hub.store().audit_log(1000).unwrap()).unwrap();
    hub.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("cluster enrolled"), "capture works");
    assert!(logs.contains("enrollment refused"), "refusals are logged");

    let sig = token.rsplit('.').next().unwrap();
    let mut secrets: Vec<(String, String)> = vec![
        ("join token".into(), token.clone()),
        ("join token signature".into(), sig.to_owned()),
        ("admin token".into(), admin_token),
    ];
    for line in pem_body(&ca_key) {
        secrets.push(("CA private key".into(), line));
    }
    for line in pem_body(&creds.key_pem)
        .into_iter()
        .chain(pem_body(&renewed_key))
    {
        secrets.push(("agent private key".into(), line));
    }
    for k in intent_keys.iter().chain(join_keys.iter()) {
        secrets.push(("signing key (hex)".into(), hex::encode(&k.pkcs8)));
        let seed = &k.pkcs8[16..48];
        secrets.push(("signing key seed (hex)".into(), hex::encode(seed)));
    }
    for (what, secret) in &secrets {
        assert!(!logs.contains(secret.as_str()), "{what} found in logs");
        assert!(
            !audit.contains(secret.as_str()),
            "{what} found in audit log"
        );
    }
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key PEM reached the logs"
    );
}
