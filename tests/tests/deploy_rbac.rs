//! The chart's RBAC against the real kube-apiserver.
//!
//! Each test installs the chart with the real `helm install` (its own release,
//! namespaces and Cluster object), then makes every call with a token of the
//! chart's own ServiceAccount (TokenRequest API), so the API server's RBAC
//! authorizer, not the agent, decides: everything the agent does is allowed,
//! and writes outside the gated namespaces, other Secrets, other Leases,
//! namespace labels and RBAC objects are refused with 403.

mod deploy_support;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use deploy_support::*;

#[tokio::test]
async fn agent_service_account_may_do_everything_the_agent_does() {
    let i = install("rbac-ok").await;
    let agent = &i.agent;

    // Namespaces: read for the gate.
    allowed(
        "list namespaces",
        Api::<Namespace>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "get a namespace",
        Api::<Namespace>::all(agent.clone()).get(&i.gated).await,
    );

    // vWorkspace objects in a gated namespace: intent apply creates them by
    // server-side apply, the controllers write finalizers and status.
    let ai = allowed(
        "create an ApplicationInstance by server-side apply in a gated namespace",
        ssa(
            agent,
            Some(&i.gated),
            &AI,
            "app",
            json!({
                "metadata": {"annotations": {"vworkspace.io/applied-intent-version": "1"}},
                "spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"},
            }),
        )
        .await,
    );
    assert!(ai.metadata.uid.is_some());
    allowed(
        "add a finalizer to an ApplicationInstance",
        dynamic(agent, Some(&i.gated), &AI)
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"finalizers": ["apps.vworkspace.io/finalizer"]}}),
                ),
            )
            .await,
    );
    let status = json!({"status": {"observedGeneration": 1, "conditions": [{
        "type": "Ready", "status": "True", "reason": "Placeholder", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
    allowed(
        "write ApplicationInstance status",
        dynamic(agent, Some(&i.gated), &AI)
            .patch_status(
                "app",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(AI.body("app", status.clone())),
            )
            .await,
    );
    allowed(
        "create an Operation in a gated namespace",
        ssa(agent, Some(&i.gated), &OP, "app-backup", json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "app"},
            "type": "Backup", "engine": "velero"}}))
        .await,
    );
    allowed(
        "write Operation status",
        dynamic(agent, Some(&i.gated), &OP)
            .patch_status(
                "app-backup",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(OP.body("app-backup", json!({"status": {"phase": "Running"}}))),
            )
            .await,
    );
    // The controllers watch every namespace (and refuse ungated ones with a
    // NamespaceNotGated status, which needs a status write there).
    allowed(
        "list ApplicationInstances cluster-wide",
        dynamic(agent, None, &AI).list(&ListParams::default()).await,
    );
    allowed(
        "list Operations cluster-wide",
        dynamic(agent, None, &OP).list(&ListParams::default()).await,
    );
    let foreign = ssa(
        &i.admin,
        Some(&i.ungated),
        &AI,
        "not-ours",
        json!({"spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"}}),
    )
    .await
    .unwrap();
    let name = foreign.metadata.name.unwrap();
    allowed(
        "report NamespaceNotGated on an ApplicationInstance outside the gated namespaces",
        dynamic(agent, Some(&i.ungated), &AI)
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(AI.body(&name, json!({"status": {"conditions": [{
                "type": "Blocked", "status": "True", "reason": "NamespaceNotGated", "message": "not gated",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))))
            .await,
    );
    allowed(
        "delete an Operation in a gated namespace (history cleanup)",
        dynamic(agent, Some(&i.gated), &OP)
            .delete("app-backup", &Default::default())
            .await,
    );

    // Downstream objects in the gated namespace: create, update, read, delete.
    for (res, name, fields) in downstream_objects() {
        allowed(
            &format!("apply {} {name} in a gated namespace", res.kind),
            ssa(agent, Some(&i.gated), res, name, fields.clone()).await,
        );
        allowed(
            &format!("get {} in a gated namespace", res.kind),
            dynamic(agent, Some(&i.gated), res).get(name).await,
        );
    }
    allowed(
        "delete a HelmRelease in a gated namespace",
        dynamic(agent, Some(&i.gated), &HELM_RELEASE)
            .delete("app", &Default::default())
            .await,
    );
    // Owned-object watches are cluster-wide, label-selected.
    for res in [
        &HELM_RELEASE,
        &HELM_REPOSITORY,
        &OCI_REPOSITORY,
        &BACKUP,
        &RESTORE,
        &VOLUME_SNAPSHOT,
        &REPLICATION_SOURCE,
        &WORKFLOW,
        &JOB,
    ] {
        allowed(
            &format!("list {} cluster-wide by label", res.plural),
            dynamic(agent, None, res)
                .list(&ListParams::default().labels("app.vworkspace.io/application-instance"))
                .await,
        );
    }
    // PVCs (snapshot sources), values Secrets and ConfigMaps: read by name.
    allowed(
        "list PVCs in a gated namespace",
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
            agent.clone(),
            &i.gated,
        )
        .list(&ListParams::default())
        .await,
    );
    let values: Secret = serde_json::from_value(
        json!({"metadata": {"name": "app-values"}, "stringData": {"values.yaml": "a: 1"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(i.admin.clone(), &i.gated)
        .create(&PostParams::default(), &values)
        .await
        .unwrap();
    allowed(
        "get a values Secret by name in a gated namespace",
        Api::<Secret>::namespaced(agent.clone(), &i.gated)
            .get("app-values")
            .await,
    );
    allowed(
        "check a values ConfigMap in a gated namespace",
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.gated)
            .get_opt("app-values")
            .await,
    );

    // Events (events.k8s.io), wherever a reconciled object lives.
    let event = |ns: &str| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": format!("app.{:x}", rand::random::<u32>()), "namespace": ns},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "vworkspace-agent",
            "reportingInstance": "agent-0", "action": "Reconcile", "reason": "NamespaceNotGated",
            "type": "Normal", "regarding": {"kind": "ApplicationInstance", "namespace": ns, "name": "app"}})
    };
    let events = ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    };
    for ns in [&i.gated, &i.ungated] {
        let ev: DynamicObject = serde_json::from_value(event(ns)).unwrap();
        allowed(
            &format!("publish an Event in {ns}"),
            Api::<DynamicObject>::namespaced_with(agent.clone(), ns, &events)
                .create(&PostParams::default(), &ev)
                .await,
        );
    }

    // Velero objects in Velero's namespace.
    for (res, name) in [
        (&BACKUP, "gated-app-backup"),
        (&RESTORE, "gated-app-restore"),
    ] {
        allowed(
            &format!("create a Velero {} in the Velero namespace", res.kind),
            ssa(
                agent,
                Some(&i.velero),
                res,
                name,
                json!({"spec": {"includedNamespaces": [i.gated]}}),
            )
            .await,
        );
    }

    // Own namespace: the join token and the credentials Secret, by name.
    let secrets = Api::<Secret>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "read the join-token Secret",
        secrets.get("vworkspace-join-token").await,
    );
    let by_name = |n: &str| ListParams::default().fields(&format!("metadata.name={n}"));
    allowed(
        "list (watch) the join-token Secret by name",
        secrets.list(&by_name("vworkspace-join-token")).await,
    );
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vworkspace-agent-credentials"},
        "type": "Opaque", "stringData": {"tls.crt": "not-a-real-cert"}});
    allowed(
        "create the credentials Secret by server-side apply",
        secrets
            .patch(
                "vworkspace-agent-credentials",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&creds),
            )
            .await,
    );
    allowed(
        "update the credentials Secret",
        secrets
            .patch(
                "vworkspace-agent-credentials",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&creds),
            )
            .await,
    );
    allowed(
        "list (watch) the credentials Secret by name",
        secrets.list(&by_name("vworkspace-agent-credentials")).await,
    );

    // The tombstones ConfigMap (agent/src/tombstones.rs): read, created and
    // updated by server-side apply, by name.
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "look for the tombstones ConfigMap",
        cms.get_opt("vworkspace-agent-tombstones").await,
    );
    let tomb = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "vworkspace-agent-tombstones"},
        "data": {"ApplicationInstance.team-a.app": "3 intent-id"}});
    for what in [
        "create the tombstones ConfigMap",
        "update the tombstones ConfigMap",
    ] {
        allowed(
            what,
            cms.patch(
                "vworkspace-agent-tombstones",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&tomb),
            )
            .await,
        );
    }

    // The Lease: created by POST (as agent/src/lease.rs does), read, renewed.
    let leases = dynamic(agent, Some(&i.agent_ns), &LEASE);
    let lease: DynamicObject = serde_json::from_value(LEASE.body(
        &i.release,
        json!({"spec": {"holderIdentity": "agent-0", "leaseDurationSeconds": 15}}),
    ))
    .unwrap();
    allowed(
        "create the Lease",
        leases.create(&PostParams::default(), &lease).await,
    );
    let mut lease = allowed("get the Lease", leases.get(&i.release).await);
    lease.data["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    allowed(
        "update (renew) the Lease",
        leases
            .replace(&i.release, &PostParams::default(), &lease)
            .await,
    );

    // The Cluster object, by name: read, watch, status.
    let clusters = dynamic(agent, None, &CLUSTER);
    allowed("get the Cluster object", clusters.get(&i.cluster).await);
    allowed(
        "watch the Cluster object by name",
        clusters.list(&by_name(&i.cluster)).await,
    );
    allowed(
        "write the Cluster status",
        clusters
            .patch_status(
                &i.cluster,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(
                    CLUSTER.body(&i.cluster, json!({"status": {"phase": "Registering"}})),
                ),
            )
            .await,
    );
}

#[tokio::test]
async fn api_server_refuses_the_agent_outside_its_grants() {
    let i = install("rbac-deny").await;
    let agent = &i.agent;

    // Each refusal is paired with the same call allowed in a gated namespace
    // first, so a 403 means "not granted", not "RBAC not loaded yet".
    for (res, name, fields) in downstream_objects() {
        allowed(
            &format!("apply {} in a gated namespace", res.kind),
            ssa(agent, Some(&i.gated), res, name, fields.clone()).await,
        );
        for ns in [&i.ungated, &i.agent_ns, &i.velero, &"default".to_string()] {
            forbidden(
                &format!("apply {} {name} in namespace {ns}", res.kind),
                ssa(agent, Some(ns), res, name, fields.clone()).await,
            );
        }
    }
    forbidden(
        "create an ApplicationInstance in a labelled namespace that is not in gatedNamespaces",
        ssa(
            agent,
            Some(&i.ungated),
            &AI,
            "app",
            json!({"spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"}}),
        )
        .await,
    );
    forbidden("create an Operation outside the gated namespaces",
        ssa(agent, Some(&i.agent_ns), &OP, "op", json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "app"},
            "type": "Backup", "engine": "velero"}})).await);
    forbidden(
        "create a Velero Backup outside Velero's namespace",
        ssa(agent, Some(&i.gated), &BACKUP, "b", json!({"spec": {}})).await,
    );

    // Secrets: only its two, by name, in its own namespace.
    let own = Api::<Secret>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "read the join token",
        own.get("vworkspace-join-token").await,
    );
    forbidden(
        "read another Secret in its own namespace",
        own.get("unrelated").await,
    );
    forbidden(
        "list Secrets in its own namespace",
        own.list(&ListParams::default()).await,
    );
    forbidden(
        "watch another Secret by name",
        own.list(&ListParams::default().fields("metadata.name=unrelated"))
            .await,
    );
    forbidden("overwrite the join-token Secret",
        own.patch("vworkspace-join-token", &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vworkspace-join-token"}, "stringData": {"x": "y"}}))).await);
    forbidden(
        "create another Secret by server-side apply",
        own.patch(
            "planted",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted"}}),
            ),
        )
        .await,
    );
    let posted: Secret =
        serde_json::from_value(json!({"metadata": {"name": "vworkspace-agent-credentials"}}))
            .unwrap();
    forbidden(
        "create a Secret by POST, even with the credentials name (resourceNames never match a POST)",
        own.create(&PostParams::default(), &posted).await,
    );
    forbidden(
        "delete the join-token Secret",
        own.delete("vworkspace-join-token", &Default::default())
            .await,
    );
    forbidden(
        "list Secrets in a gated namespace",
        Api::<Secret>::namespaced(agent.clone(), &i.gated)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "read a Secret in a namespace it does not manage",
        Api::<Secret>::namespaced(agent.clone(), &i.ungated)
            .get("anything")
            .await,
    );
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.agent_ns);
    forbidden(
        "create a ConfigMap other than its tombstones in its own namespace",
        cms.patch(
            "planted",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "planted"}}),
            ),
        )
        .await,
    );
    forbidden(
        "list ConfigMaps in its own namespace",
        cms.list(&ListParams::default()).await,
    );
    forbidden(
        "list Secrets cluster-wide",
        Api::<Secret>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );

    // Another Lease (create cannot be limited by name, so it is granted; but
    // reading or renewing any Lease but its own is not), another Cluster object,
    // another ServiceAccount.
    let other_lease: DynamicObject = serde_json::from_value(
        LEASE.body("someone-else", json!({"spec": {"holderIdentity": "other"}})),
    )
    .unwrap();
    let leases = dynamic(&i.admin, Some(&i.agent_ns), &LEASE);
    let mut other_lease = leases
        .create(&PostParams::default(), &other_lease)
        .await
        .unwrap();
    let agent_leases = dynamic(agent, Some(&i.agent_ns), &LEASE);
    forbidden("read another Lease", agent_leases.get("someone-else").await);
    other_lease.data["spec"]["holderIdentity"] = json!("agent-0");
    forbidden(
        "take over another Lease",
        agent_leases
            .replace("someone-else", &PostParams::default(), &other_lease)
            .await,
    );
    forbidden(
        "create a ServiceAccount other than vworkspace-operation-runner in a gated namespace",
        ssa(
            agent,
            Some(&i.gated),
            &SERVICE_ACCOUNT,
            "powerful",
            json!({}),
        )
        .await,
    );
    let other_cluster = format!("{}-other", i.cluster);
    ssa(
        &i.admin,
        None,
        &CLUSTER,
        &other_cluster,
        json!({"spec": {}}),
    )
    .await
    .unwrap();
    forbidden(
        "read another Cluster object",
        dynamic(agent, None, &CLUSTER).get(&other_cluster).await,
    );
    forbidden(
        "list every Cluster object",
        dynamic(agent, None, &CLUSTER)
            .list(&ListParams::default())
            .await,
    );

    // No way to widen its own gate or rights.
    let ns_api = Api::<Namespace>::all(agent.clone());
    forbidden(
        "label a namespace managed-by=vworkspace",
        ns_api
            .patch(
                &i.ungated,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
            )
            .await,
    );
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": format!("{}-new", i.release)}}))
            .unwrap();
    forbidden(
        "create a namespace",
        ns_api.create(&PostParams::default(), &ns).await,
    );
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{}-gated", i.release)},
        "subjects": [{"kind": "ServiceAccount", "name": i.release, "namespace": i.agent_ns}]});
    let rbs = Api::<DynamicObject>::namespaced_with(
        agent.clone(),
        &i.ungated,
        &ApiResource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "RoleBinding".into(),
            plural: "rolebindings".into(),
        },
    );
    forbidden(
        "bind its write role in another namespace",
        rbs.patch(
            "escalate",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&rb),
        )
        .await,
    );
    forbidden(
        "read pods in a gated namespace (it has no pod rights)",
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(agent.clone(), &i.gated)
            .list(&ListParams::default())
            .await,
    );
}
