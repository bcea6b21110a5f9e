//! Identity over time: certificate renewal over the tunnel, revocation, and
//! re-enrollment when the join token is replaced.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use vworkspace_agent::ConnState;
use vworkspace_agent::hub::creds::{Credentials, TOKEN_FINGERPRINT_ANNOTATION, token_fingerprint};
use vworkspace_crds::Cluster;

const CONNECT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(45);

async fn creds(cp: &Cluster_) -> Credentials {
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    let s = secrets.get("vworkspace-agent-credentials").await.unwrap();
    Credentials::from_secret(&s).unwrap()
}

async fn condition(cp: &Cluster_, type_: &str) -> Option<(String, String)> {
    let c = Api::<Cluster>::all(cp.client.clone())
        .get_opt(&cp.cluster_object)
        .await
        .ok()??;
    c.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_certificate_is_renewed_over_the_tunnel_and_used_after_the_old_one_expires() {
    init();
    let _serial = serial().await;
    let cp = control_plane("renew").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hub_config(dir.path());
    // Short-lived certificates: two thirds of the lifetime passes at once.
    cfg.client_cert_lifetime = Duration::from_secs(20);
    let hub = start_hub(cfg.clone()).await;
    let cluster = "edge-renew";
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let first = creds(&cp).await;
    let first_expiry = first.not_after().unwrap();

    eventually(STEP, "a renewed certificate", || async {
        agent
            .metric("vworkspace_agent_certificate_renewals_total{result=\"ok\"}")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    let renewed = creds(&cp).await;
    assert_ne!(renewed.cert_pem, first.cert_pem);
    assert_ne!(renewed.key_pem, first.key_pem, "renewal uses a fresh key");
    assert!(renewed.not_after().unwrap() >= first_expiry);
    assert_eq!(renewed.cluster_id, cluster);

    // Once the first certificate has expired, a reconnect works only with the renewed one.
    eventually(STEP, "the first certificate to expire", || async {
        (vworkspace_protocol::unix_now() > first_expiry + 1).then_some(())
    })
    .await;
    let addr = hub.tls_addr;
    hub.shutdown().await;
    agent.wait_state(ConnState::Disconnected, STEP).await;
    let mut cfg2 = cfg.clone();
    cfg2.listen = addr;
    let hub = start_hub(cfg2).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert!(hub.hub.is_connected(cluster));
    agent.stop().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_identity_is_reported_and_a_replaced_token_re_enrolls() {
    let cluster = "edge-revoke";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token,
    } = joined("revoke", cluster).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(
        creds(&cp).await.token_fingerprint.as_deref(),
        Some(token_fingerprint(&token).as_str())
    );

    // Revocation closes the live tunnel and refuses the certificate from then on.
    hub.hub.revoke(cluster).unwrap();
    agent.wait_state(ConnState::Disconnected, STEP).await;
    eventually(STEP, "Authenticated=False/CredentialRejected", || async {
        condition(&cp, "Authenticated")
            .await
            .filter(|(s, r)| s == "False" && r == "CredentialRejected")
    })
    .await;
    assert_eq!(cluster_phase(&cp).await.as_deref(), Some("Disconnected"));

    // A new token (which re-admits the cluster) replaces the old one: re-enrollment.
    let token2 = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token2).await;
    let fp2 = token_fingerprint(&token2);
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let c = creds(&cp).await;
    assert_eq!(c.token_fingerprint.as_deref(), Some(fp2.as_str()));
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    let annotations = secrets
        .get("vworkspace-agent-credentials")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(annotations[TOKEN_FINGERPRINT_ANNOTATION], fp2);
    eventually(STEP, "Authenticated=True again", || async {
        condition(&cp, "Authenticated")
            .await
            .filter(|(s, _)| s == "True")
    })
    .await;
    let status = Api::<Cluster>::all(cp.client.clone())
        .get(&cp.cluster_object)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.observed_token.as_deref(), Some(fp2.as_str()));
    assert!(
        agent
            .metric("vworkspace_agent_enrollments_total{result=\"ok\"}")
            .await
            .unwrap()
            >= 1.0
    );
    agent.stop().await;
    let logs = captured_logs();
    assert!(!logs.contains(&token) && !logs.contains(&token2));
    hub.shutdown().await;
}

/// A token the hub never issued, pointing at `hub_url` with CA pin `pin`.
fn crafted_token(hub_url: &str, pin: &str, iat: i64, exp: i64) -> String {
    let (issuer, _) = vworkspace_protocol::JoinTokenIssuer::generate().unwrap();
    let claims = vworkspace_protocol::JoinClaims {
        iss: "someone-else".into(),
        aud: vworkspace_protocol::JOIN_TOKEN_AUDIENCE.into(),
        hub_url: hub_url.into(),
        ca_sha256: pin.into(),
        cluster: "edge-crafted".into(),
        org: "acme".into(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat,
        exp,
    };
    issuer.issue(&claims).unwrap().expose_secret().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_failures_are_reported_on_the_cluster_without_the_token() {
    init();
    let _serial = serial().await;
    let cp = control_plane("enrollfail").await;
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(hub_config(dir.path())).await;
    let url = hub.hub.public_url().to_owned();
    let now = vworkspace_protocol::unix_now();

    // The hub does not present the pinned CA: refused before any request is sent.
    let wrong_pin = crafted_token(&url, &"ab".repeat(32), now, now + 600);
    join(&cp, &wrong_pin).await;
    let agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    eventually(STEP, "Authenticated=False/CaPinMismatch", || async {
        condition(&cp, "Authenticated")
            .await
            .filter(|(s, r)| s == "False" && r == "CaPinMismatch")
    })
    .await;
    assert_eq!(cluster_phase(&cp).await.as_deref(), Some("Error"));
    assert_eq!(*agent.state.borrow(), ConnState::WaitingForCredentials);
    assert!(
        agent
            .metric("vworkspace_agent_enrollments_total{result=\"CaPinMismatch\"}")
            .await
            .is_some()
    );

    // The right pin, but a token the hub never issued: the hub refuses it.
    let pin = hub.hub.ca().sha256_hex();
    let forged = crafted_token(&url, &pin, now, now + 600);
    join(&cp, &forged).await;
    eventually(STEP, "Authenticated=False/RegistrationFailed", || async {
        condition(&cp, "Authenticated")
            .await
            .filter(|(s, r)| s == "False" && r == "RegistrationFailed")
    })
    .await;

    // An expired token is refused by the agent itself.
    let expired = crafted_token(&url, &pin, now - 7200, now - 3600);
    join_expecting_error(&cp, &expired).await;

    agent.stop().await;
    let logs = captured_logs();
    for t in [&wrong_pin, &forged, &expired] {
        assert!(
            !logs.contains(t.as_str()),
            "a join token appears in the logs"
        );
    }
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    assert!(
        secrets
            .get_opt("vworkspace-agent-credentials")
            .await
            .unwrap()
            .is_none(),
        "no credentials without a successful enrollment"
    );
    hub.shutdown().await;
}

async fn join_expecting_error(cp: &Cluster_, token: &str) {
    use vworkspace_agent::process::args::{Dur, IdentityArgs, JoinArgs, KubeArgs};
    let err = vworkspace_agent::runtime::cli::join(
        cp.client.clone(),
        JoinArgs {
            kube: KubeArgs::default(),
            identity: IdentityArgs {
                namespace: cp.agent_ns.clone(),
                cluster_object: cp.cluster_object.clone(),
                credentials_secret: "vworkspace-agent-credentials".into(),
            },
            token: token.to_owned(),
            token_secret: "vworkspace-join-token".into(),
            wait: Dur(Duration::ZERO),
        },
    )
    .await
    .expect_err("an expired token must be refused by join");
    let msg = err.to_string();
    assert!(msg.contains("expired"), "{msg}");
    assert!(!msg.contains(token));
}
