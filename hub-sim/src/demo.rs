//! `hub-sim demo`: the whole hub-side loop once, in one process, against a
//! simulated protocol agent. The hub runs in a fresh temporary state dir.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use vworkspace_protocol::{Condition, Frame, ObjectKind, ObjectRef, Status};

use crate::sim_agent::{Tunnel, enroll};
use crate::table::{GetWhat, render_table};

fn status(kind: ObjectKind, name: &str, phase: Option<&str>, ty: &str, reason: &str) -> Frame {
    Frame::Status(Status {
        object: ObjectRef::new(kind, "team-a", name),
        generation: 1,
        observed_generation: Some(1),
        version: Some(1),
        phase: phase.map(str::to_owned),
        conditions: vec![Condition {
            type_: ty.into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: None,
        }],
        outputs: Default::default(),
        hash: format!("{name}-{reason}"),
        deleted: false,
    })
}

/// Runs the demo, printing each step.
pub async fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hub-sim-demo-{}", uuid::Uuid::new_v4()));
    let result = run_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path) -> anyhow::Result<()> {
    let hub = crate::start(crate::Config::ephemeral(dir)).await?;
    println!(
        "1. hub-sim listening on {} (admin {}), state in {}",
        hub.tls_addr,
        hub.admin_addr,
        dir.display()
    );
    let token = hub.hub.create_token("edge-1", "acme", None)?;
    println!(
        "2. join token issued for cluster edge-1 / org acme (jti {}; the token itself is a secret)",
        token.jti
    );
    let creds = enroll(hub.tls_addr, hub.hub.ca().cert_pem(), &token.token).await?;
    println!(
        "3. enrolled: client certificate for {} / {}, tunnel {}",
        creds.response.org, creds.response.cluster_id, creds.response.tunnel_url
    );
    match enroll(hub.tls_addr, hub.hub.ca().cert_pem(), &token.token).await {
        Ok(_) => bail!("a join token was accepted twice"),
        Err(e) => println!("   reusing the token is refused: {e}"),
    }
    let mut tunnel = Tunnel::open(hub.tls_addr, &creds).await?;
    println!(
        "4. tunnel open over mutual TLS; Welcome names cluster {} with {} signing key(s)",
        tunnel.welcome.cluster_id,
        tunnel.welcome.signing_keys.len()
    );

    let app = json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance",
        "metadata": {"name": "nextcloud", "namespace": "team-a"},
        "spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "managed",
                 "chart": {"sourceType": "helm", "url": "https://nextcloud.github.io/helm", "name": "nextcloud", "version": "6.6.4"},
                 "release": {"name": "nextcloud", "namespace": "team-a"}}
    });
    let op = json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1", "kind": "Operation",
        "metadata": {"name": "backup-1", "namespace": "team-a"},
        "spec": {"targetRef": {"name": "nextcloud"}, "type": "Backup", "engine": "velero"}
    });
    hub.hub.apply(Some("edge-1"), &app)?;
    hub.hub.apply(Some("edge-1"), &op)?;
    for _ in 0..2 {
        let v = tunnel
            .take_intent()
            .await?
            .map_err(|r| anyhow::anyhow!("rejected: {r}"))?;
        println!(
            "5. intent verified (key {}): {} v{}",
            v.kid, v.payload.object, v.payload.version
        );
    }
    tunnel
        .send(status(
            ObjectKind::ApplicationInstance,
            "nextcloud",
            None,
            "Ready",
            "HelmReleaseReady",
        ))
        .await?;
    tunnel
        .send(status(
            ObjectKind::Operation,
            "backup-1",
            Some("Succeeded"),
            "Succeeded",
            "EngineCompleted",
        ))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.hub.store().statuses(Some("edge-1"), None)?.len() < 2 {
        if tokio::time::Instant::now() > deadline {
            bail!("statuses did not arrive");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("6. statuses stored:\n");
    print!(
        "{}",
        render_table(
            GetWhat::Clusters,
            &serde_json::to_value(hub.hub.clusters()?)?
        )
    );
    println!();
    print!(
        "{}",
        render_table(
            GetWhat::Apps,
            &serde_json::to_value(hub.hub.objects(None, Some("ApplicationInstance"))?)?
        )
    );
    println!();
    print!(
        "{}",
        render_table(
            GetWhat::Operations,
            &serde_json::to_value(hub.hub.objects(None, Some("Operation"))?)?
        )
    );
    println!();

    hub.hub.set_faults(
        "edge-1",
        crate::faults::Faults {
            corrupt_signature: true,
            ..Default::default()
        },
    )?;
    let mut upgrade = app.clone();
    upgrade["spec"]["chart"]["version"] = json!("6.6.5");
    hub.hub.apply(Some("edge-1"), &upgrade)?;
    match tunnel.take_intent().await? {
        Ok(_) => bail!("a corrupted signature verified"),
        Err(r) => println!(
            "7. fault corrupt_signature: the agent side rejects the upgrade ({}: {r})",
            r.code()
        ),
    }
    hub.hub.set_faults("edge-1", Default::default())?;

    hub.hub.revoke("edge-1")?;
    let closed = tunnel.recv().await;
    println!(
        "8. revoked: live tunnel got {}",
        match closed {
            Ok(env) => env.body.type_name().to_owned(),
            Err(e) => e.to_string(),
        }
    );
    match Tunnel::open(hub.tls_addr, &creds).await {
        Ok(_) => bail!("a revoked certificate opened a tunnel"),
        Err(e) => println!("   reconnecting with the revoked certificate fails: {e}"),
    }
    hub.shutdown().await;
    println!("9. hub stopped; demo complete");
    Ok(())
}
