//! The control-plane harness against the real kube-apiserver + etcd.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, PostParams};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn version_is_the_pinned_release() {
    init();
    let client = vworkspace_e2e::shared_client();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(
        info.git_version,
        vworkspace_e2e::assets::pinned_versions().kubernetes
    );
    assert_eq!(info.major, "1");
}

#[tokio::test]
async fn namespace_and_configmap_round_trip() {
    init();
    let client = vworkspace_e2e::shared_client();
    let ns = vworkspace_e2e::test_namespace(&client, "roundtrip")
        .await
        .unwrap();
    let got = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    let labels = got.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("managed-by").map(String::as_str),
        Some("vworkspace")
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("c".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let back = cms.get("c").await.unwrap();
    assert_eq!(back.data.unwrap()["k"], "v");
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}
