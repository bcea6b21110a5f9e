//! The third-party kinds the controllers write, as dynamic API resources (no
//! generated types: the real upstream CRDs in the cluster are the schema).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

/// One upstream kind: group, version, kind and plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind {
    /// API group (empty for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
}

/// Flux HelmRelease.
pub const HELM_RELEASE: Kind = Kind {
    group: "helm.toolkit.fluxcd.io",
    version: "v2",
    kind: "HelmRelease",
    plural: "helmreleases",
};
/// Flux HelmRepository.
pub const HELM_REPOSITORY: Kind = Kind {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "HelmRepository",
    plural: "helmrepositories",
};
/// Flux OCIRepository.
pub const OCI_REPOSITORY: Kind = Kind {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "OCIRepository",
    plural: "ocirepositories",
};
/// Velero Backup.
pub const VELERO_BACKUP: Kind = Kind {
    group: "velero.io",
    version: "v1",
    kind: "Backup",
    plural: "backups",
};
/// Velero Restore.
pub const VELERO_RESTORE: Kind = Kind {
    group: "velero.io",
    version: "v1",
    kind: "Restore",
    plural: "restores",
};
/// CSI VolumeSnapshot.
pub const VOLUME_SNAPSHOT: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshot",
    plural: "volumesnapshots",
};
/// VolSync ReplicationSource.
pub const REPLICATION_SOURCE: Kind = Kind {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationSource",
    plural: "replicationsources",
};
/// Argo Workflow.
pub const WORKFLOW: Kind = Kind {
    group: "argoproj.io",
    version: "v1alpha1",
    kind: "Workflow",
    plural: "workflows",
};
/// batch/v1 Job (built in, always present).
pub const JOB: Kind = Kind {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
};

// === impl Kind ===

impl Kind {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The dynamic API resource.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// An empty object of this kind with name and namespace set.
    pub fn object(&self, name: &str, namespace: &str) -> DynamicObject {
        DynamicObject::new(name, &self.api_resource()).within(namespace)
    }

    /// Human name for messages, e.g. `velero.io/v1 Backup`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.api_version(), self.kind)
    }

    /// Whether the API server serves this kind (its CRD is installed).
    pub async fn is_served(&self, client: &kube::Client) -> Result<bool, kube::Error> {
        let gv = self.api_version();
        match client.list_api_group_resources(&gv).await {
            Ok(list) => Ok(list.resources.iter().any(|r| r.name == self.plural)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
