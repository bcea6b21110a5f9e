//! A cluster that goes dark past its certificate's expiry, while the hub
//! rotates and retires its intent key and queues intents: the agent recovers
//! the certificate with its key, gets the new key ring in `Welcome` and
//! applies everything. In-process hub-sim with 20 s certificates, the agent
//! library against the real kube-apiserver.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use vworkspace_agent::ConnState;
use vworkspace_agent::hub::creds::Credentials;
use vworkspace_crds::well_known::annotations::APPLIED_INTENT_VERSION;
use vworkspace_crds::{ApplicationInstance, Cluster};

const CONNECT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(45);

async fn creds(cp: &Cluster_) -> Credentials {
    let secrets: Api<Secret> = Api::namespaced(cp.client.clone(), &cp.agent_ns);
    let s = secrets.get("vworkspace-agent-credentials").await.unwrap();
    Credentials::from_secret(&s).unwrap()
}

async fn condition(cp: &Cluster_, type_: &str) -> Option<(String, String, String)> {
    let c = Api::<Cluster>::all(cp.client.clone())
        .get_opt(&cp.cluster_object)
        .await
        .ok()??;
    c.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

async fn applied(cp: &Cluster_, ns: &str, name: &str) -> Option<u64> {
    let ai = Api::<ApplicationInstance>::namespaced(cp.client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    ai.metadata
        .annotations?
        .get(APPLIED_INTENT_VERSION)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_dark_past_expiry_and_a_key_retirement_recovers_and_applies_the_queue() {
    init();
    let _serial = serial().await;
    let cp = control_plane("recover").await;
    let ns = vworkspace_e2e::test_namespace(&cp.client, "recover-apps")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hub_config(dir.path());
    cfg.client_cert_lifetime = Duration::from_secs(20);
    cfg.recovery_window = Duration::from_secs(600);
    let hub = start_hub(cfg).await;
    let cluster = "edge-dark";
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    eventually(STEP, "ClockSkew=False", || async {
        condition(&cp, "ClockSkew")
            .await
            .filter(|c| c.0 == "False" && c.1 == "ClockInSync")
    })
    .await;
    let old_kid = hub.hub.signing_keys()[0].kid.clone();

    // Dark.
    agent.stop().await;
    let held = creds(&cp).await;
    let new_kid = hub.hub.rotate_keys().unwrap();
    hub.hub.retire_key(&old_kid).unwrap();
    assert_ne!(new_kid, old_kid);
    let mut versions = Vec::new();
    for catalog in ["one", "two", "three"] {
        versions.push(
            hub.hub
                .apply(Some(cluster), &app_manifest(&ns, "queued", catalog))
                .unwrap()
                .version,
        );
    }
    let expiry = held.not_after().unwrap();
    eventually(STEP, "the held certificate to expire", || async {
        (vworkspace_protocol::unix_now() > expiry + 1).then_some(())
    })
    .await;

    // Back.
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    let recovered = creds(&cp).await;
    assert_ne!(recovered.cert_pem, held.cert_pem);
    assert_ne!(recovered.key_pem, held.key_pem, "recovery uses a fresh key");
    assert!(recovered.not_after().unwrap() > expiry);
    let last = *versions.last().unwrap();
    eventually(STEP, "the queued intents applied", || async {
        (applied(&cp, &ns, "queued").await == Some(last)).then_some(())
    })
    .await;
    let ai = Api::<ApplicationInstance>::namespaced(cp.client.clone(), &ns)
        .get("queued")
        .await
        .unwrap();
    assert_eq!(ai.spec.app_ref.catalog_id, "three");
    let audit = hub.hub.store().audit_log(100).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.event == "recover" && r.outcome == "ok")
            .count(),
        1
    );
    assert!(
        !captured_logs().contains("unknown_key"),
        "an intent arrived before the key ring"
    );
    agent.stop().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_cluster_is_not_recovered_and_the_cluster_says_what_to_do() {
    init();
    let _serial = serial().await;
    let cp = control_plane("recover-revoked").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hub_config(dir.path());
    cfg.client_cert_lifetime = Duration::from_secs(20);
    let hub = start_hub(cfg).await;
    let cluster = "edge-gone";
    let token = hub.hub.create_token(cluster, "acme", None).unwrap().token;
    join(&cp, &token).await;
    let mut agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    agent.wait_state(ConnState::Connected, CONNECT).await;
    agent.stop().await;
    let expiry = creds(&cp).await.not_after().unwrap();
    hub.hub.revoke(cluster).unwrap();
    eventually(STEP, "the held certificate to expire", || async {
        (vworkspace_protocol::unix_now() > expiry + 1).then_some(())
    })
    .await;
    let agent = start_agent(&cp.client, agent_config(&cp, "replica-1")).await;
    let (_, _, message) = eventually(STEP, "Authenticated=False/IdentityRevoked", || async {
        condition(&cp, "Authenticated")
            .await
            .filter(|c| c.0 == "False" && c.1 == "IdentityRevoked")
    })
    .await;
    assert!(
        message.contains("hub-sim token create --cluster edge-gone"),
        "{message}"
    );
    // Several tunnel backoffs (2 s here) later, still one request.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let refusals = hub
        .hub
        .store()
        .audit_log(100)
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "enroll" && r.detail.contains("recovery:"))
        .count();
    assert_eq!(refusals, 1);
    agent.stop().await;
    hub.shutdown().await;
}
