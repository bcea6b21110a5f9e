//! Leader election: with several agent replicas only one holds the tunnel,
//! and another takes over when it stops (gracefully or by dying).

mod agent_support;

use std::time::Duration;

use agent_support::*;
use vworkspace_agent::ConnState;

const CONNECT: Duration = Duration::from_secs(90);

/// Samples until `done` holds, asserting that the hub never sees two tunnels.
async fn watch_single_tunnel(
    hub: &hub_sim::RunningHub,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = hub.hub.tunnel_count();
        assert!(n <= 1, "{n} tunnels open at once while waiting for {what}");
        if done() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_of_several_replicas_holds_the_tunnel_and_another_takes_over() {
    let cluster = "edge-lease";
    let Joined {
        serial: _serial,
        cp,
        dir: _dir,
        hub,
        token: _,
    } = joined("lease", cluster).await;

    let a = start_agent(&cp.client, agent_config(&cp, "replica-a")).await;
    let b = start_agent(&cp.client, agent_config(&cp, "replica-b")).await;
    let connected = |r: &RunningAgent| *r.state.borrow() == ConnState::Connected;
    watch_single_tunnel(&hub, "one replica connected", CONNECT, || {
        connected(&a) || connected(&b)
    })
    .await;
    // Keep watching for a while: the standby must stay a standby.
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    watch_single_tunnel(&hub, "a quiet period", CONNECT, || {
        tokio::time::Instant::now() >= until
    })
    .await;
    let (leader, mut standby) = if connected(&a) { (a, b) } else { (b, a) };
    assert!(*leader.leader.borrow());
    assert!(!*standby.leader.borrow());
    assert_eq!(*standby.state.borrow(), ConnState::Standby);
    assert_eq!(hub.hub.tunnel_count(), 1);
    assert_eq!(standby.metric("vworkspace_agent_leader").await, Some(0.0));
    assert_eq!(leader.metric("vworkspace_agent_leader").await, Some(1.0));
    assert_eq!(
        standby.admin_get("/readyz").await.0,
        200,
        "a standby is ready"
    );

    // Graceful stop vacates the Lease: the standby takes over.
    leader.stop().await;
    standby.wait_state(ConnState::Connected, CONNECT).await;
    assert_eq!(hub.hub.tunnel_count(), 1);

    // A replica that dies without vacating is replaced once its Lease expires.
    let mut c = start_agent(&cp.client, agent_config(&cp, "replica-c")).await;
    standby.kill().await;
    c.wait_state(ConnState::Connected, CONNECT).await;
    watch_single_tunnel(&hub, "the new leader's tunnel", CONNECT, || {
        hub.hub.is_connected(cluster)
    })
    .await;
    c.stop().await;
    hub.shutdown().await;
}
