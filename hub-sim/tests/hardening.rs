//! hub-sim under attack from outside: slow clients, enrollment floods,
//! unsendable intents, RSA keys, agents that try to fill the store, and the
//! admin API's edges. Each test names the defence it proves.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vworkspace_protocol::enrollment::EnrollRequest;
use vworkspace_protocol::{Condition, Event, Frame, IntentOutcome, ObjectKind, ObjectRef, Status};

/// An ApplicationInstance whose spec is under the admin API's 1 MiB JSON
/// limit but over the 1 MiB frame limit as MessagePack: `0.1,` is four bytes
/// of JSON and nine of MessagePack.
fn float_heavy_app(name: &str) -> serde_json::Value {
    let floats: Vec<f64> = vec![0.1; 200_000];
    serde_json::json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"appRef": {"catalogId": "nextcloud"}, "values": {"weights": floats}},
    })
}

/// One enrollment request on its own connection: status, Retry-After, body.
async fn enroll_once(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    body: &[u8],
) -> (u16, Option<String>, serde_json::Value) {
    let tls = tls_raw(addr, ca_pem).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/enroll")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn metrics_text(hub: &hub_sim::RunningHub) -> String {
    // /metrics needs no admin token.
    hub_sim::admin_client::AdminClient::new(hub.admin_addr, "wrong")
        .get("/metrics")
        .await
        .expect("metrics are served without the admin token")
        .as_str()
        .expect("metrics are text")
        .to_owned()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn apply_refuses_an_intent_too_large_for_a_frame_once_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    hub.hub.create_token("edge-1", "acme", None).unwrap();
    let manifest = float_heavy_app("big");
    assert!(serde_json::to_vec(&manifest).unwrap().len() < 1024 * 1024);
    let err = hub
        .admin_client()
        .post("/v1/clusters/edge-1/apply", &manifest)
        .await
        .expect_err("an intent that can never be delivered is refused");
    match err {
        hub_sim::admin_client::ClientError::Status { status, message } => {
            assert_eq!(status, 413);
            assert!(
                message.contains("bytes as MessagePack") && message.contains("limit"),
                "{message}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        hub.hub
            .store()
            .intents(Some("edge-1"), 10)
            .unwrap()
            .is_empty()
    );
    // A normal manifest still goes through.
    hub.admin_client()
        .post("/v1/clusters/edge-1/apply", &app("small", "team", 1))
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test]
async fn an_unsendable_intent_is_settled_undeliverable_and_later_intents_still_flow() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    // Bypass the apply check, as an intent stored by an older hub would.
    let big = float_heavy_app("big");
    let stuck = hub
        .hub
        .store()
        .create_intent(
            "edge-1",
            "ApplicationInstance",
            "team",
            "big",
            hub_sim::store::IntentAction::Apply,
            Some(&big),
        )
        .unwrap();
    hub.hub
        .apply(Some("edge-1"), &app("after", "team", 1))
        .unwrap();

    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let (seq, _, payload) = agent.recv_intent().await;
    assert_eq!(payload.object.name, "after");
    agent.ack(seq, &payload, IntentOutcome::Applied).await;
    eventually("the stuck intent is settled as undeliverable", || async {
        hub.hub
            .store()
            .intent(&stuck.id)
            .unwrap()
            .is_some_and(|i| i.outcome.as_deref() == Some("undeliverable"))
    })
    .await;
    // The tunnel stays up: a reconnect does not hit the same intent again.
    drop(agent);
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    hub.hub
        .apply(Some("edge-1"), &app("later", "team", 2))
        .unwrap();
    let (_, _, payload) = agent.recv_intent().await;
    assert_eq!(payload.object.name, "later");
    let text = metrics_text(&hub).await;
    assert_eq!(
        metric(&text, "hub_intents_total{outcome=\"undeliverable\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "hub_frames_refused_total{reason=\"intent_too_large\"}"
        ),
        1.0
    );
    hub.shutdown().await;
}

/// A client that sends enrollment headers and then one body byte every
/// 200 ms. Returns how long the hub kept the connection open (`None` if it
/// never got a connection at all).
async fn slow_body(addr: std::net::SocketAddr, ca_pem: String) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    let tls = tls_raw(addr, &ca_pem).await.ok()?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(
        b"POST /v1/enroll HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10000\r\n\r\n{",
    )
    .await
    .ok()?;
    let closed = async move {
        let mut buf = [0u8; 512];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let trickle = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = closed => {}
        _ = trickle => {}
        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
    }
    Some(start.elapsed())
}

#[tokio::test]
async fn slow_enrollment_bodies_are_cut_and_cannot_starve_enrolled_agents() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| {
        c.max_connections = 6;
        c.max_unauthenticated = 3;
        c.request_timeout = Duration::from_secs(1);
    })
    .await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;

    // Eight slow clients: more than every slot the hub has.
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(slow_body(hub.tls_addr, ca.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An enrolled agent still gets in while they trickle.
    let agent = tokio::time::timeout(
        Duration::from_secs(5),
        TestAgent::connect(hub.tls_addr, &creds, vec![]),
    )
    .await
    .expect("an enrolled agent connects during a slow-body flood");
    // Every slow client is cut within the request deadline (plus slack).
    for s in slow {
        if let Some(held) = s.await.unwrap() {
            assert!(held < Duration::from_secs(5), "slow body held {held:?}");
        }
    }
    // And enrollment works again afterwards.
    let token = hub.hub.create_token("edge-2", "acme", None).unwrap().token;
    enroll(hub.tls_addr, &ca, &token).await.unwrap();
    let text = metrics_text(&hub).await;
    assert!(
        metric(
            &text,
            "hub_connections_refused_total{reason=\"request_timeout\"}"
        ) >= 1.0
    );
    drop(agent);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_enrollment_flood_gets_429_rate_limited_with_retry_after_and_few_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    let (csr, _) = new_csr();
    let forged = serde_json::to_vec(&EnrollRequest {
        token: "eyJhbGciOiJFZERTQSJ9.eyJmb3JnZWQiOnRydWV9.c2lnbmF0dXJl".into(),
        csr_pem: csr,
    })
    .unwrap();
    let mut unauthorized = 0;
    let mut limited = 0;
    for _ in 0..200 {
        let (status, retry_after, body) = enroll_once(hub.tls_addr, &ca, &forged).await;
        match status {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                assert_eq!(body["code"], "rate_limited");
                let secs: u64 = retry_after
                    .expect("429 carries Retry-After")
                    .parse()
                    .unwrap();
                assert!(secs >= 1);
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    // The per-peer budget is a burst of 20 plus one per second.
    assert!(
        unauthorized <= 40,
        "{unauthorized} forged attempts reached the token check"
    );
    assert!(limited >= 160, "only {limited} rate limited");
    let rows = hub.hub.store().audit_log(10_000).unwrap();
    let limited_rows = rows.iter().filter(|r| r.outcome == "rate_limited").count();
    println!(
        "enrollment flood: 200 forged requests, {unauthorized} reached the token check (401), {limited} got 429, {limited_rows} rate_limited audit rows, {} audit rows in all",
        rows.len()
    );
    assert!(
        limited_rows <= 5,
        "{limited_rows} audit rows for rate limiting"
    );
    assert!(
        rows.len() <= 60,
        "{} audit rows for 200 requests",
        rows.len()
    );
    let text = metrics_text(&hub).await;
    assert_eq!(
        metric(&text, "hub_rate_limited_requests_total{scope=\"peer\"}"),
        limited as f64
    );
    assert_eq!(
        metric(&text, "hub_enrollments_total{outcome=\"token_invalid\"}"),
        unauthorized as f64
    );
    hub.shutdown().await;
}

fn csr_for(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(vec!["agent".to_owned()])
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

#[tokio::test]
async fn rsa_and_p384_csrs_are_refused_and_p256_and_ed25519_are_signed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    let rsa = rsa_2048_key();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    for (what, key) in [("RSA-2048", &rsa), ("P-384", &p384)] {
        let token = hub.hub.create_token("edge-1", "acme", None).unwrap().token;
        let body = serde_json::to_vec(&EnrollRequest {
            token,
            csr_pem: csr_for(key),
        })
        .unwrap();
        let (status, body) = enroll_raw(hub.tls_addr, &ca, body).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["code"], "csr_invalid", "{what}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("ECDSA P-256 or Ed25519"),
            "{what}: {message}"
        );
    }
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    for key in [&ed, &p256] {
        let token = hub.hub.create_token("edge-1", "acme", None).unwrap().token;
        let body = serde_json::to_vec(&EnrollRequest {
            token,
            csr_pem: csr_for(key),
        })
        .unwrap();
        let (status, body) = enroll_raw(hub.tls_addr, &ca, body).await;
        assert_eq!(status, 200, "{body}");
    }
    hub.shutdown().await;
}

fn status_for(name: &str, outputs_bytes: usize) -> Status {
    let mut outputs = std::collections::BTreeMap::new();
    if outputs_bytes > 0 {
        outputs.insert(
            "blob".to_owned(),
            serde_json::json!("x".repeat(outputs_bytes)),
        );
    }
    Status {
        object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", name),
        generation: 1,
        observed_generation: Some(1),
        version: None,
        phase: None,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ok".into(),
            message: "ok".into(),
            observed_generation: Some(1),
            last_transition_time: None,
        }],
        outputs,
        hash: format!("h-{name}"),
        deleted: false,
    }
}

#[tokio::test]
async fn one_cluster_cannot_grow_the_store_without_bound_and_agent_events_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub_with(dir.path(), |c| {
        c.storage.max_unknown_objects = 10;
        c.storage.max_status_bytes = 4096;
        c.storage.max_events = 50;
    })
    .await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    hub.hub
        .apply(Some("edge-1"), &app("declared", "team", 1))
        .unwrap();
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let (seq, _, p) = agent.recv_intent().await;
    agent.ack(seq, &p, IntentOutcome::Applied).await;

    for i in 0..30 {
        agent
            .send(Frame::Status(status_for(&format!("unknown-{i}"), 0)))
            .await;
    }
    // A status of ~1 MiB for the declared object is kept only as a stub.
    agent
        .send(Frame::Status(status_for("declared", 1000 * 1024)))
        .await;
    for i in 0..200 {
        agent
            .send(Frame::Event(Event {
                time: 1,
                severity: "Normal".into(),
                reason: "Chatty".into(),
                message: format!("event {i}"),
                object: None,
                intent_id: None,
            }))
            .await;
    }
    eventually("all 200 events are processed", || async {
        hub.hub
            .store()
            .agent_events(Some("edge-1"), 1000)
            .unwrap()
            .last()
            .is_some_and(|e| e.message == "event 199")
    })
    .await;
    let statuses = hub.hub.store().statuses(Some("edge-1"), None).unwrap();
    assert_eq!(
        statuses.len(),
        11,
        "10 undeclared objects plus the declared one"
    );
    let declared = statuses.iter().find(|s| s.name == "declared").unwrap();
    assert_eq!(declared.hash.as_deref(), Some("h-declared"));
    let stub = serde_json::to_string(&declared.outputs).unwrap();
    assert!(
        stub.len() < 1024 && stub.contains("over the hub's limit"),
        "{stub}"
    );
    assert_eq!(
        hub.hub
            .store()
            .agent_events(Some("edge-1"), 1000)
            .unwrap()
            .len(),
        50
    );
    // The hub's own audit log holds none of it.
    let audit = hub.hub.store().audit_log(200).unwrap();
    assert!(audit.iter().all(|a| a.event != "agent.event"));
    assert!(audit.iter().any(|a| a.event == "tunnel.connect"));
    let text = metrics_text(&hub).await;
    assert_eq!(
        metric(
            &text,
            "hub_storage_refused_total{reason=\"unknown_object_limit\"}"
        ),
        20.0
    );
    assert_eq!(
        metric(
            &text,
            "hub_storage_refused_total{reason=\"status_too_large\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "hub_storage_refused_total{reason=\"event_evicted\"}"),
        150.0
    );
    assert_eq!(metric(&text, "hub_tunnels_open"), 1.0);
    assert_eq!(metric(&text, "hub_intents_total{outcome=\"applied\"}"), 1.0);
    assert_eq!(metric(&text, "hub_enrollments_total{outcome=\"ok\"}"), 1.0);
    hub.shutdown().await;
}

#[tokio::test]
async fn admin_api_refuses_bad_names_404s_unknown_clusters_and_closes_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    hub.hub.create_token("edge-1", "acme", None).unwrap();
    let admin = hub.admin_client();
    for (ns, name) in [
        ("team", "../etc"),
        ("team", "a\nb"),
        ("Team", "ok"),
        ("team", ""),
    ] {
        let mut m = app("x", ns, 1);
        m["metadata"]["name"] = serde_json::json!(name);
        let err = admin
            .post("/v1/clusters/edge-1/apply", &m)
            .await
            .expect_err("a name that is not a DNS label is refused");
        assert!(
            matches!(&err, hub_sim::admin_client::ClientError::Status { status: 400, message } if message.contains("DNS label")),
            "{ns}/{name:?}: {err}"
        );
    }
    let err = admin
        .post(
            "/v1/clusters/edge-1/delete",
            &serde_json::json!({"kind": "ApplicationInstance", "namespace": "team", "name": "../x"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        hub_sim::admin_client::ClientError::Status { status: 400, .. }
    ));
    for path in ["/v1/clusters/nope/faults", "/v1/clusters/nope/inventory"] {
        let err = admin.get(path).await.expect_err("unknown cluster");
        assert!(
            matches!(
                err,
                hub_sim::admin_client::ClientError::Status { status: 404, .. }
            ),
            "{path}: {err}"
        );
    }
    assert!(admin.get("/v1/clusters/edge-1/faults").await.is_ok());

    // An idle connection (no request at all) is closed after the header timeout.
    let mut idle = tokio::net::TcpStream::connect(hub.admin_addr)
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), idle.read(&mut buf))
        .await
        .expect("the hub closes an idle admin connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(start.elapsed() <= hub_sim::admin::HEADER_READ_TIMEOUT + Duration::from_secs(2));
    hub.shutdown().await;
}

#[tokio::test]
async fn the_hub_presents_its_leaf_followed_by_the_pinned_ca() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let tls = tls_raw(hub.tls_addr, hub.hub.ca().cert_pem())
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(chain.len(), 2, "leaf and CA");
    assert_eq!(chain[1].as_ref(), hub.hub.ca().cert_der().as_ref());
    assert_eq!(
        vworkspace_protocol::ca_sha256_hex(chain[1].as_ref()),
        hub.hub.ca().sha256_hex()
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_with_an_rsa_key_is_refused_at_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    // An RSA certificate with a valid identity, signed by the hub CA directly
    // (as a hub that certified RSA keys would have done).
    let ca_key = rcgen::KeyPair::try_from(hub.hub.ca().key_pkcs8_der()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(hub.hub.ca().cert_pem(), ca_key).unwrap();
    let rsa = rsa_2048_key();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "acme");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edge-1");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        hub_sim::ca::identity_uri("acme", "edge-1")
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&rsa, &issuer).unwrap();
    let opened = TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&cert.pem(), &rsa.serialize_pem())),
    )
    .await;
    assert!(opened.is_err(), "an RSA client certificate opened a tunnel");
    // The P-256 certificate from enrollment still works.
    TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    hub.shutdown().await;
}
