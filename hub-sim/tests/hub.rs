//! hub-sim in process, attacked and exercised by a protocol-level test client.

mod common;

use common::*;
use vworkspace_protocol::enrollment::EnrollErrorCode;
use vworkspace_protocol::{
    self as proto, AppliedVersion, Condition, Frame, IntentAction, IntentOutcome, JoinClaims,
    JoinTokenIssuer, ObjectKind, ObjectRef, RenewCert, Status, VerifyContext,
};

fn claims_for(
    hub: &hub_sim::RunningHub,
    cluster: &str,
    org: &str,
    iat: i64,
    exp: i64,
) -> JoinClaims {
    JoinClaims {
        iss: "hub-sim".into(),
        aud: proto::JOIN_TOKEN_AUDIENCE.into(),
        hub_url: hub.hub.public_url().into(),
        ca_sha256: hub.hub.ca().sha256_hex(),
        cluster: cluster.into(),
        org: org.into(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat,
        exp,
    }
}

fn hub_join_issuer(hub: &hub_sim::RunningHub) -> JoinTokenIssuer {
    let row = hub
        .hub
        .store()
        .keys(hub_sim::keys::JOIN)
        .unwrap()
        .pop()
        .unwrap();
    JoinTokenIssuer::from_pkcs8(&row.pkcs8).unwrap()
}

#[tokio::test]
async fn enrollment_succeeds_once_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    let token = hub.hub.create_token("edge-1", "acme", None).unwrap().token;

    // A bad CSR is refused and does not burn the token.
    let body = serde_json::json!({"token": token, "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"});
    let (status, err) = enroll_raw(hub.tls_addr, &ca, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "csr_invalid");
    let (status, err) = enroll_raw(hub.tls_addr, &ca, b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "bad_request");

    let creds = enroll(hub.tls_addr, &ca, &token)
        .await
        .expect("first use succeeds");
    let resp = creds.response.clone().unwrap();
    assert_eq!(
        (resp.cluster_id.as_str(), resp.org.as_str()),
        ("edge-1", "acme")
    );
    assert_eq!(resp.tunnel_url, format!("wss://{}/v1/tunnel", hub.tls_addr));
    assert_eq!(resp.signing_keys, hub.hub.signing_keys());
    let der =
        rustls_pki_types::CertificateDer::from_pem_slice(resp.certificate_pem.as_bytes()).unwrap();
    let id = hub_sim::ca::identity_from_cert(&der).unwrap();
    assert_eq!((id.org.as_str(), id.cluster.as_str()), ("acme", "edge-1"));

    let (status, err) = enroll(hub.tls_addr, &ca, &token)
        .await
        .err()
        .expect("second use fails");
    assert_eq!(status, 409);
    assert_eq!(err.code, EnrollErrorCode::TokenReused);

    let audit = hub.hub.store().audit_log(100).unwrap();
    let outcomes: Vec<&str> = audit
        .iter()
        .filter(|a| a.event == "enroll")
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        vec!["csr_invalid", "bad_request", "ok", "token_reused"]
    );
    hub.shutdown().await;
}

use rustls_pki_types::pem::PemObject;

#[tokio::test]
async fn expired_forged_foreign_and_malformed_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();
    hub.hub.create_token("edge-1", "acme", None).unwrap();
    let now = hub_sim::store::now();

    // Expired: correctly signed with the hub's own key, two minutes past expiry (beyond skew).
    let issuer = hub_join_issuer(&hub);
    let expired = issuer
        .issue(&claims_for(&hub, "edge-1", "acme", now - 3600, now - 120))
        .unwrap();
    let (status, err) = enroll(hub.tls_addr, &ca, expired.expose_secret())
        .await
        .err()
        .unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenExpired));

    // Forged: a valid token with its claims swapped for another cluster (signature breaks).
    let good = hub.hub.create_token("edge-2", "acme", None).unwrap().token;
    let parts: Vec<&str> = good.split('.').collect();
    let other = issuer
        .issue(&claims_for(&hub, "edge-9", "acme", now, now + 600))
        .unwrap();
    let other_claims = other.expose_secret().split('.').nth(1).unwrap().to_owned();
    let forged = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
    let (status, err) = enroll(hub.tls_addr, &ca, &forged).await.err().unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenInvalid));

    // Forged with a key the hub does not know.
    let (rogue, _) = JoinTokenIssuer::generate().unwrap();
    let rogue_token = rogue
        .issue(&claims_for(&hub, "edge-2", "acme", now, now + 600))
        .unwrap();
    let (status, err) = enroll(hub.tls_addr, &ca, rogue_token.expose_secret())
        .await
        .err()
        .unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenInvalid));

    // Correct signature but never issued (jti unknown to the store).
    let unissued = issuer
        .issue(&claims_for(&hub, "edge-1", "acme", now, now + 600))
        .unwrap();
    let (status, err) = enroll(hub.tls_addr, &ca, unissued.expose_secret())
        .await
        .err()
        .unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenInvalid));

    // Foreign: issued by another hub.
    let other_dir = tempfile::tempdir().unwrap();
    let other_hub = start_hub(other_dir.path()).await;
    let foreign = other_hub
        .hub
        .create_token("edge-1", "acme", None)
        .unwrap()
        .token;
    let (status, err) = enroll(hub.tls_addr, &ca, &foreign).await.err().unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenInvalid));
    other_hub.shutdown().await;

    // Malformed.
    let (status, err) = enroll(hub.tls_addr, &ca, "not.a.jwt").await.err().unwrap();
    assert_eq!((status, err.code), (401, EnrollErrorCode::TokenInvalid));

    // A token for a revoked cluster.
    let t = hub.hub.create_token("edge-3", "acme", None).unwrap().token;
    hub.hub.revoke("edge-3").unwrap();
    let (status, err) = enroll(hub.tls_addr, &ca, &t).await.err().unwrap();
    assert_eq!((status, err.code), (403, EnrollErrorCode::ClusterRevoked));

    // The untouched edge-2 token still works: refusals consumed nothing.
    enroll(hub.tls_addr, &ca, &good)
        .await
        .expect("edge-2 enrolls");
    let refused = hub
        .hub
        .store()
        .audit_log(100)
        .unwrap()
        .into_iter()
        .filter(|a| a.event == "enroll" && a.outcome != "ok")
        .count();
    assert_eq!(refused, 7);
    hub.shutdown().await;
}

#[tokio::test]
async fn tunnel_refuses_missing_foreign_and_revoked_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let ca = hub.hub.ca().cert_pem().to_owned();

    // No certificate: TLS completes (enrollment needs that) but the upgrade is refused.
    match TestAgent::open(hub.tls_addr, &ca, None).await {
        Err(ConnectError::Ws(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 401)
        }
        Err(e) => panic!("expected HTTP 401, got {e:?}"),
        Ok(_) => panic!("tunnel opened without a client certificate"),
    }

    // A certificate from another CA with the right-looking identity.
    let other_dir = tempfile::tempdir().unwrap();
    let other = start_hub(other_dir.path()).await;
    let foreign = enroll_cluster(&other, "edge-1", "acme").await;
    hub.hub.create_token("edge-1", "acme", None).unwrap();
    assert!(
        TestAgent::open(
            hub.tls_addr,
            &ca,
            Some((&foreign.cert_pem, &foreign.key_pem))
        )
        .await
        .is_err(),
        "certificate from another CA accepted"
    );
    other.shutdown().await;

    // Revoked: the live tunnel is closed, and the certificate is refused afterwards.
    let creds = enroll_cluster(&hub, "edge-2", "acme").await;
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    eventually("tunnel registered", || async {
        hub.hub.is_connected("edge-2")
    })
    .await;
    hub.hub.revoke("edge-2").unwrap();
    match agent.try_recv().await {
        Ok(env) => match env.body {
            Frame::Error(e) => assert_eq!(e.code, "unauthorized"),
            other => panic!("expected error frame, got {other:?}"),
        },
        Err(e) => panic!("expected error frame before close, got {e}"),
    }
    assert!(
        agent.try_recv().await.is_err(),
        "tunnel stays open after revoke"
    );
    assert!(
        TestAgent::open(
            hub.tls_addr,
            &creds.ca_pem,
            Some((&creds.cert_pem, &creds.key_pem))
        )
        .await
        .is_err(),
        "revoked certificate accepted"
    );
    // Re-admitting the cluster with a new token does not revive the old certificate.
    hub.hub.create_token("edge-2", "acme", None).unwrap();
    assert!(
        TestAgent::open(
            hub.tls_addr,
            &creds.ca_pem,
            Some((&creds.cert_pem, &creds.key_pem))
        )
        .await
        .is_err(),
        "old certificate accepted after re-admission"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn offline_intents_are_delivered_in_order_and_resume_from_applied() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    // Applied while the agent is offline.
    for i in 0..3 {
        hub.hub.apply(Some("edge-1"), &app("a", "team", i)).unwrap();
    }
    hub.hub.apply(Some("edge-1"), &app("b", "team", 0)).unwrap();
    hub.hub
        .delete("edge-1", "ApplicationInstance", "team", "b")
        .unwrap();

    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let ring = agent.key_ring();
    let w = agent.welcome.clone().unwrap();
    assert_eq!((w.cluster_id.as_str(), w.org.as_str()), ("edge-1", "acme"));
    let mut got = vec![];
    for _ in 0..5 {
        let (seq, signed, p) = agent.recv_intent().await;
        let verified = ring
            .verify(
                &signed,
                &VerifyContext::new("edge-1", hub_sim::store::now()).with_org("acme"),
            )
            .expect("intent verifies");
        assert_eq!(verified.payload, p);
        got.push((
            p.object.name.clone(),
            p.version,
            matches!(p.action, IntentAction::Delete),
        ));
        if p.object.name == "a" && p.version == 1 {
            match &p.action {
                IntentAction::Apply { spec } => assert_eq!(spec["mode"], "placeholder"),
                IntentAction::Delete => panic!("a@1 must be an apply"),
            }
        }
        // Ack only the first two.
        if got.len() <= 2 {
            agent.ack(seq, &p, IntentOutcome::Applied).await;
        }
    }
    assert_eq!(
        got,
        vec![
            ("a".into(), 1, false),
            ("a".into(), 2, false),
            ("a".into(), 3, false),
            ("b".into(), 1, false),
            ("b".into(), 2, true)
        ]
    );
    let pending = || {
        hub.hub
            .store()
            .pending_intents("edge-1", 0, 100)
            .unwrap()
            .len()
    };
    eventually("two acks recorded", || async { pending() == 3 }).await;

    // Status intake.
    agent
        .send(Frame::Status(Status {
            object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", "a"),
            generation: 3,
            observed_generation: Some(3),
            version: Some(3),
            phase: None,
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "HelmReleaseReady".into(),
                message: "ok".into(),
                observed_generation: Some(3),
                last_transition_time: None,
            }],
            outputs: Default::default(),
            hash: "h1".into(),
            deleted: false,
        }))
        .await;
    eventually("status stored", || async {
        hub.hub
            .store()
            .statuses(Some("edge-1"), None)
            .unwrap()
            .len()
            == 1
    })
    .await;
    // Status digest: a matching hash asks for nothing; a differing or unknown one
    // gets a ResyncRequest naming exactly those objects.
    let entry = |name: &str, hash: &str| proto::InventoryEntry {
        object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", name),
        version: 1,
        status_hash: hash.into(),
    };
    agent
        .send(Frame::Inventory(proto::Inventory {
            objects: vec![entry("a", "h1"), entry("zz", "h9")],
            chunk: None,
            buckets: None,
        }))
        .await;
    match agent.recv().await.body {
        Frame::ResyncRequest(r) => assert_eq!(
            r.objects,
            vec![ObjectRef::new(
                ObjectKind::ApplicationInstance,
                "team",
                "zz"
            )]
        ),
        other => panic!("expected resync request, got {other:?}"),
    }
    drop(agent);

    // Reconnect reporting a@3 applied: only b's two intents come again.
    let mut agent = TestAgent::connect(
        hub.tls_addr,
        &creds,
        vec![AppliedVersion {
            object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", "a"),
            version: 3,
        }],
    )
    .await;
    let (s1, _, p1) = agent.recv_intent().await;
    let (s2, _, p2) = agent.recv_intent().await;
    assert_eq!((p1.object.name.as_str(), p1.version), ("b", 1));
    assert_eq!((p2.object.name.as_str(), p2.version), ("b", 2));
    agent.ack(s1, &p1, IntentOutcome::Noop).await;
    agent
        .ack(
            s2,
            &p2,
            IntentOutcome::Rejected {
                code: "forbidden".into(),
                message: "namespace not gated".into(),
            },
        )
        .await;
    eventually("all settled", || async { pending() == 0 }).await;
    let objs = hub
        .hub
        .objects(Some("edge-1"), Some("ApplicationInstance"))
        .unwrap();
    let a = objs.iter().find(|o| o.object.name == "a").unwrap();
    assert_eq!(
        a.status.as_ref().unwrap().conditions[0]["reason"],
        "HelmReleaseReady"
    );
    let b = objs.iter().find(|o| o.object.name == "b").unwrap();
    assert!(b.object.deleted);
    assert_eq!(b.last_outcome.as_deref(), Some("rejected"));
    hub.shutdown().await;
}

#[tokio::test]
async fn window_bounds_in_flight_and_new_intents_flow_live() {
    let dir = tempfile::tempdir().unwrap();
    init();
    let mut cfg = hub_sim::Config::ephemeral(dir.path());
    cfg.window = 2;
    let hub = hub_sim::start(cfg).await.unwrap();
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    assert_eq!(agent.welcome.as_ref().unwrap().max_in_flight, 2);
    for i in 0..4 {
        hub.hub
            .apply(Some("edge-1"), &app(&format!("x{i}"), "team", i))
            .unwrap();
    }
    let (s0, _, p0) = agent.recv_intent().await;
    let (s1, _, p1) = agent.recv_intent().await;
    assert_eq!(
        (p0.object.name.as_str(), p1.object.name.as_str()),
        ("x0", "x1")
    );
    // Nothing more until an ack frees the window: prove it by a renewal round trip,
    // which the hub answers in order after anything it had already sent.
    let (csr, _key) = new_csr();
    agent
        .send(Frame::RenewCert(RenewCert { csr_pem: csr }))
        .await;
    match agent.recv().await.body {
        Frame::CertIssued(c) => {
            let der =
                rustls_pki_types::CertificateDer::from_pem_slice(c.certificate_pem.as_bytes())
                    .unwrap();
            let id = hub_sim::ca::identity_from_cert(&der).unwrap();
            assert_eq!(id.cluster, "edge-1");
            assert_eq!(c.ca_bundle_pem, hub.hub.ca().cert_pem());
        }
        other => panic!("window exceeded or no renewal: {other:?}"),
    }
    agent.ack(s0, &p0, IntentOutcome::Applied).await;
    let (_, _, p2) = agent.recv_intent().await;
    assert_eq!(p2.object.name, "x2");
    agent.ack(s1, &p1, IntentOutcome::Applied).await;
    let (_, _, p3) = agent.recv_intent().await;
    assert_eq!(p3.object.name, "x3");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_intent_acked_apply_failed_is_sent_again_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    init();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    hub.hub
        .apply(Some("edge-1"), &app("web", "team", 1))
        .unwrap();
    let failed = || IntentOutcome::Rejected {
        code: "apply_failed".into(),
        message: "the API server did not answer".into(),
    };
    // The cluster's API server is down: two failures, then it is back.
    let (s, _, first) = agent.recv_intent().await;
    agent.ack(s, &first, failed()).await;
    let (s, _, again) = agent.recv_intent().await;
    assert_eq!(again.intent_id, first.intent_id, "the same intent, resent");
    agent.ack(s, &again, failed()).await;
    let (s, _, third) = agent.recv_intent().await;
    assert_eq!(third.intent_id, first.intent_id);
    agent.ack(s, &third, IntentOutcome::Applied).await;
    let pending = || {
        hub.hub
            .store()
            .pending_intents("edge-1", 0, 100)
            .unwrap()
            .len()
    };
    eventually("the intent settled as applied", || async { pending() == 0 }).await;
    assert_eq!(
        hub.hub.metrics().intent_resends.get(),
        2,
        "two resends counted"
    );
    // Settled: a later apply goes out next, not the old intent again.
    hub.hub
        .apply(Some("edge-1"), &app("web", "team", 2))
        .unwrap();
    let (_, _, next) = agent.recv_intent().await;
    assert_eq!((next.object.name.as_str(), next.version), ("web", 2));
    hub.shutdown().await;
}

#[tokio::test]
async fn shutdown_says_goodbye_with_retry_after_and_rotation_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let old_keys = agent.welcome.clone().unwrap().signing_keys;
    assert_eq!(old_keys.len(), 1);

    // Rotation: live tunnels are asked to reconnect, and get both keys.
    let new_kid = hub.hub.rotate_keys().unwrap();
    match agent.recv().await.body {
        Frame::Goodbye(g) => assert!(g.retry_after_secs.is_some()),
        other => panic!("expected goodbye on rotation, got {other:?}"),
    }
    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let keys = agent.welcome.clone().unwrap().signing_keys;
    assert_eq!(keys.len(), 2);
    hub.hub.apply(Some("edge-1"), &app("a", "team", 1)).unwrap();
    let (_, signed, _) = agent.recv_intent().await;
    assert_eq!(signed.kid, new_kid);

    let shutdown = tokio::spawn(hub.shutdown());
    match agent.recv().await.body {
        Frame::Goodbye(g) => {
            assert_eq!(g.retry_after_secs, Some(5));
            assert!(g.reason.contains("shutting down"));
        }
        other => panic!("expected goodbye, got {other:?}"),
    }
    shutdown.await.unwrap();
}

#[tokio::test]
async fn protocol_violations_get_error_frames() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;

    // No common subprotocol: 400 before any upgrade.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let cfg = {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(hub.hub.ca().cert_der().clone()).unwrap();
            let chain = vec![
                rustls_pki_types::CertificateDer::from_pem_slice(creds.cert_pem.as_bytes())
                    .unwrap(),
            ];
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).unwrap();
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
        };
        let tcp = tokio::net::TcpStream::connect(hub.tls_addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let mut req = "wss://localhost/v1/tunnel".into_client_request().unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("vworkspace.v9+msgpack"),
        );
        match tokio_tungstenite::client_async(req, tls).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400);
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains(proto::SUBPROTOCOL_V1), "{body}");
            }
            other => panic!("expected 400, got {:?}", other.map(|_| ())),
        }
    }

    // Frame before Hello.
    let mut a = TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )
    .await
    .unwrap();
    a.send(Frame::Event(proto::Event {
        time: 0,
        severity: "Normal".into(),
        reason: "X".into(),
        message: "m".into(),
        object: None,
        intent_id: None,
    }))
    .await;
    match a.recv().await.body {
        Frame::Error(e) => assert_eq!(e.code, "unexpected_frame"),
        other => panic!("{other:?}"),
    }

    // Sequence gap.
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    a.seq += 5;
    a.send(Frame::Inventory(Default::default())).await;
    match a.recv().await.body {
        Frame::Error(e) => assert_eq!(e.code, "sequence_error"),
        other => panic!("{other:?}"),
    }

    // Oversized frame from the agent is refused by size.
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    use futures::SinkExt;
    let junk = vec![0u8; proto::limits::MAX_FRAME_BYTES + 10];
    let _ =
        a.ws.send(tokio_tungstenite::tungstenite::Message::Binary(junk.into()))
            .await;
    match a.try_recv().await {
        Ok(env) => match env.body {
            Frame::Error(e) => assert_eq!(e.code, "frame_too_large"),
            other => panic!("{other:?}"),
        },
        Err(e) => assert!(e.contains("closed") || e.contains("ws error"), "{e}"),
    }
    hub.shutdown().await;
}

async fn set_faults(hub: &hub_sim::RunningHub, cluster: &str, json: serde_json::Value) {
    hub.admin_client()
        .put(&format!("/v1/clusters/{cluster}/faults"), &json)
        .await
        .expect("faults set through the admin API");
}

#[tokio::test]
async fn fault_switches_do_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    let now = hub_sim::store::now;
    let ctx = |t| VerifyContext::new("edge-1", t).with_org("acme");

    // duplicate: the same signed intent twice.
    set_faults(&hub, "edge-1", serde_json::json!({"duplicate": true})).await;
    hub.hub.apply(Some("edge-1"), &app("d", "team", 1)).unwrap();
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let (s1, i1, p1) = a.recv_intent().await;
    let (_, i2, _) = a.recv_intent().await;
    assert_eq!(i1, i2);
    a.ack(s1, &p1, IntentOutcome::Applied).await;
    drop(a);

    // reorder: a batch arrives newest first.
    set_faults(&hub, "edge-1", serde_json::json!({"reorder": true})).await;
    hub.hub.apply(Some("edge-1"), &app("r", "team", 1)).unwrap();
    hub.hub.apply(Some("edge-1"), &app("r", "team", 2)).unwrap();
    eventually("old tunnel gone", || async {
        !hub.hub.is_connected("edge-1")
    })
    .await;
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let (sa, _, pa) = a.recv_intent().await;
    let (sb, _, pb) = a.recv_intent().await;
    assert_eq!((pa.version, pb.version), (2, 1), "not reordered");
    a.ack(sa, &pa, IntentOutcome::Applied).await;
    a.ack(sb, &pb, IntentOutcome::Applied).await;

    // corrupt_signature, expired, foreign_cluster: each makes verification fail as named.
    let ring = a.key_ring();
    for (switch, code) in [
        ("corrupt_signature", proto::RejectionCode::BadSignature),
        ("expired", proto::RejectionCode::Expired),
        ("foreign_cluster", proto::RejectionCode::ForeignCluster),
    ] {
        set_faults(&hub, "edge-1", serde_json::json!({ switch: true })).await;
        hub.hub
            .apply(
                Some("edge-1"),
                &app(switch.replace('_', "-").as_str(), "team", 1),
            )
            .unwrap();
        let (seq, signed, p) = a.recv_intent().await;
        let rejection = ring.verify(&signed, &ctx(now())).expect_err(switch);
        assert_eq!(rejection.code(), code, "{switch}");
        a.ack(seq, &p, rejection.to_outcome()).await;
    }
    set_faults(&hub, "edge-1", serde_json::json!({})).await;
    hub.hub
        .apply(Some("edge-1"), &app("clean", "team", 1))
        .unwrap();
    let (seq, signed, p) = a.recv_intent().await;
    ring.verify(&signed, &ctx(now()))
        .expect("clean intent verifies once switches are off");
    a.ack(seq, &p, IntentOutcome::Applied).await;
    eventually("rejections recorded", || async {
        hub.hub
            .store()
            .intents(Some("edge-1"), 100)
            .unwrap()
            .iter()
            .filter(|i| i.outcome.as_deref() == Some("rejected"))
            .count()
            == 3
    })
    .await;

    // delay_ms: frames are held at least that long.
    set_faults(&hub, "edge-1", serde_json::json!({"delay_ms": 300})).await;
    let started = std::time::Instant::now();
    hub.hub
        .apply(Some("edge-1"), &app("slow", "team", 1))
        .unwrap();
    let (seq, _, p) = a.recv_intent().await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    a.ack(seq, &p, IntentOutcome::Applied).await;

    // oversized_frame: right after Welcome, a frame above the protocol limit.
    set_faults(&hub, "edge-1", serde_json::json!({"oversized_frame": true})).await;
    drop(a);
    eventually("old tunnel gone", || async {
        !hub.hub.is_connected("edge-1")
    })
    .await;
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let err = a.try_recv().await.expect_err("oversized frame decoded");
    assert!(err.contains("exceeds the limit"), "{err}");
    drop(a);

    // drop_after_frames: 1 lets Welcome through, then the connection dies
    // without Goodbye or close frame when the hub next sends.
    set_faults(&hub, "edge-1", serde_json::json!({"drop_after_frames": 1})).await;
    eventually("old tunnel gone", || async {
        !hub.hub.is_connected("edge-1")
    })
    .await;
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    hub.hub
        .apply(Some("edge-1"), &app("dropped", "team", 1))
        .unwrap();
    let err = a.try_recv().await.expect_err("frame after the drop point");
    assert!(
        !err.contains("closed: Some"),
        "abrupt drop sent a close frame: {err}"
    );
    // 0 drops before Welcome.
    set_faults(&hub, "edge-1", serde_json::json!({"drop_after_frames": 0})).await;
    let mut a = TestAgent::open(
        hub.tls_addr,
        &creds.ca_pem,
        Some((&creds.cert_pem, &creds.key_pem)),
    )
    .await
    .unwrap();
    a.send(Frame::Hello(proto::Hello {
        agent_version: "t".into(),
        capabilities: vec![],
        applied: vec![],
        max_in_flight: None,
        chunk: None,
        digest_buckets: false,
    }))
    .await;
    assert!(
        a.try_recv().await.is_err(),
        "welcome sent despite drop_after_frames=0"
    );
    // The undelivered intent is still pending: nothing is lost to a drop.
    assert!(
        hub.hub
            .store()
            .pending_intents("edge-1", 0, 10)
            .unwrap()
            .iter()
            .any(|i| i.name == "dropped")
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn idle_tunnels_are_dropped_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_hub(dir.path()).await;
    let creds = enroll_cluster(&first, "edge-1", "acme").await;
    first.shutdown().await;
    // Same state, restarted with one connection slot and a 1 s idle timeout.
    let mut cfg = hub_sim::Config::ephemeral(dir.path());
    cfg.idle_timeout = std::time::Duration::from_secs(1);
    cfg.ping_interval = std::time::Duration::from_secs(30);
    cfg.max_connections = 1;
    let hub = hub_sim::start(cfg).await.unwrap();

    let mut agent = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    eventually("tunnel registered", || async {
        hub.hub.is_connected("edge-1")
    })
    .await;
    // The single slot is taken: a second connection is closed at accept.
    assert!(
        TestAgent::open(
            hub.tls_addr,
            &creds.ca_pem,
            Some((&creds.cert_pem, &creds.key_pem))
        )
        .await
        .is_err(),
        "connection limit not enforced"
    );
    // The agent stays silent; the hub closes the tunnel with a close frame.
    let err = agent.try_recv().await.expect_err("idle tunnel kept open");
    assert!(err.contains("idle timeout"), "{err}");
    eventually("tunnel unregistered", || async {
        !hub.hub.is_connected("edge-1")
    })
    .await;
    hub.shutdown().await;
}

#[tokio::test]
async fn inventory_behind_the_hub_gets_acked_intents_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path()).await;
    let creds = enroll_cluster(&hub, "edge-1", "acme").await;
    hub.hub
        .apply(Some("edge-1"), &app("kept", "team", 1))
        .unwrap();
    hub.hub
        .apply(Some("edge-1"), &app("lost", "team", 1))
        .unwrap();
    hub.hub
        .apply(Some("edge-1"), &app("refused", "team", 1))
        .unwrap();
    let mut a = TestAgent::connect(hub.tls_addr, &creds, vec![]).await;
    let mut first = vec![];
    for _ in 0..3 {
        let (seq, _, p) = a.recv_intent().await;
        let outcome = if p.object.name == "refused" {
            IntentOutcome::Rejected {
                code: "forbidden".into(),
                message: "namespace not gated".into(),
            }
        } else {
            IntentOutcome::Applied
        };
        a.ack(seq, &p, outcome).await;
        first.push(p);
    }
    eventually("all acked", || async {
        hub.hub
            .store()
            .pending_intents("edge-1", 0, 10)
            .unwrap()
            .is_empty()
    })
    .await;
    // The agent's inventory holds only "kept": "lost" comes again (same intent),
    // "refused" does not.
    a.send(Frame::Inventory(proto::Inventory {
        objects: vec![proto::InventoryEntry {
            object: ObjectRef::new(ObjectKind::ApplicationInstance, "team", "kept"),
            version: 1,
            status_hash: String::new(),
        }],
        chunk: None,
        buckets: None,
    }))
    .await;
    let (seq, _, again) = a.recv_intent().await;
    let lost = first.iter().find(|p| p.object.name == "lost").unwrap();
    assert_eq!(again.intent_id, lost.intent_id);
    assert_eq!(again.version, 1);
    // Next: the digest answer for "kept" (no stored status), not "refused".
    match a.recv().await.body {
        Frame::ResyncRequest(r) => assert_eq!(
            r.objects,
            vec![ObjectRef::new(
                ObjectKind::ApplicationInstance,
                "team",
                "kept"
            )]
        ),
        other => panic!("expected resync request, got {other:?}"),
    }
    // A replayed rejection counts as delivered.
    a.ack(
        seq,
        &again,
        IntentOutcome::Rejected {
            code: "replayed".into(),
            message: "version 1 is not newer than applied version 1".into(),
        },
    )
    .await;
    eventually("replayed settles as noop", || async {
        hub.hub
            .store()
            .intent(&again.intent_id)
            .unwrap()
            .is_some_and(|i| i.outcome.as_deref() == Some("noop"))
    })
    .await;
    hub.shutdown().await;
}
