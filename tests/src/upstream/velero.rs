//! The real Velero server out of cluster, with the AWS object-store plugin and
//! an S3-compatible store (gofakes3) on 127.0.0.1.
//!
//! Backups are resource-only: no node agent (it needs a kubelet and pod
//! volumes), no VolumeSnapshotLocation (it needs a CSI driver or a cloud), so
//! Velero uploads each Backup's resource tarball and metadata to the bucket and
//! restores objects from there.
//!
//! ```no_run
//! # async fn t() {
//! let velero = vworkspace_e2e::upstream::velero::shared(); // once per test binary
//! let keys = velero.store().list(velero::BUCKET, "backups/").await.unwrap();
//! # use vworkspace_e2e::upstream::velero;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

use super::UpstreamError;
use crate::ControlPlane;
use crate::assets::VeleroSet;
use crate::daemon::{Daemon, DaemonError, free_port, http_get};

/// Velero's namespace (the agent's `--velero-namespace` default).
pub const NAMESPACE: &str = "velero";
/// The bucket the `default` BackupStorageLocation writes to.
pub const BUCKET: &str = "velero";
/// The credentials Secret the locations name (`spec.credential`).
pub const CREDENTIALS_SECRET: &str = "cloud-credentials";
/// How long the server may take until `default` is Available.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How often Velero re-checks a location (its default is a minute).
const STORE_VALIDATION: &str = "10s";
const MANAGER: &str = "vworkspace-e2e";

/// Set once a real Velero server runs in this process: the Velero stand-in
/// then leaves Backups and Restores to it.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Whether a real Velero server was started in this process.
pub fn running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

/// BackupStorageLocation (velero.io/v1).
pub fn backup_storage_location_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("velero.io", "v1", "BackupStorageLocation"),
        "backupstoragelocations",
    )
}

/// gofakes3 serving a directory as S3 on 127.0.0.1.
#[derive(Debug)]
pub struct S3Store {
    daemon: Daemon,
    port: u16,
    data: PathBuf,
}

impl S3Store {
    /// Starts gofakes3 with the filesystem backend under `dir/s3` and the
    /// bucket [`BUCKET`] created; ready once it answers `ListBuckets`.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Self, UpstreamError> {
        let data = dir.join("s3");
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("-host")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-backend", "fs", "-fs.create", "-initialbucket", BUCKET])
            .arg("-fs.path")
            .arg(&data);
        let daemon = Daemon::spawn("gofakes3", cmd, dir)?;
        daemon
            .wait_http_ok(port, "/", Duration::from_secs(30))
            .await?;
        Ok(Self { daemon, port, data })
    }

    /// `http://127.0.0.1:<port>`, the `s3Url` of a location.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The filesystem backend's directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The store's process.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Object keys under `prefix` in `bucket`, through the S3 API
    /// (`ListObjectsV2`, first 1000 keys).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, String> {
        let path = format!("/{bucket}?list-type=2&prefix={prefix}");
        let (status, body) = http_get(self.port, &path)
            .await
            .ok_or_else(|| format!("GET {path}: no answer from {}", self.url()))?;
        if status != 200 {
            return Err(format!("GET {path}: {status}: {body:.300}"));
        }
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect())
    }
}

/// The Velero server and its store.
#[derive(Debug)]
pub struct Velero {
    store: S3Store,
    server: Daemon,
    bins: VeleroSet,
    metrics_port: u16,
}

impl Velero {
    /// Installs Velero's CRDs, the `velero` namespace, the credentials Secret
    /// and the `default` location, starts the store and the server, and
    /// returns once `default` is Available. `dir` holds the logs, the plugin
    /// directory, the store's data and Velero's credential files.
    pub async fn start(cp: &ControlPlane, dir: &Path) -> Result<Self, UpstreamError> {
        let started = std::time::Instant::now();
        let bins = tokio::task::spawn_blocking(crate::assets::resolve_velero)
            .await
            .map_err(|e| UpstreamError::Panicked(e.to_string()))??;
        let client = cp.client()?;
        crate::crds::install_velero_server_crds(&client).await?;
        let store = S3Store::start(&bins.gofakes3, dir).await?;

        let pp = PatchParams::apply(MANAGER).force();
        kube::Api::<Namespace>::all(client.clone())
            .patch(
                NAMESPACE,
                &pp,
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
                })),
            )
            .await?;
        // Placeholder keys: gofakes3 accepts any signature.
        kube::Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .patch(
                CREDENTIALS_SECRET,
                &pp,
                &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": CREDENTIALS_SECRET, "namespace": NAMESPACE},
                    "stringData": {"cloud": "[default]\naws_access_key_id = vws-e2e\naws_secret_access_key = vws-e2e-placeholder\n"},
                })),
            )
            .await?;
        apply_location(&client, "default", &store.url(), true).await?;
        // Restores read the server's own Deployment (its image names the
        // restore helper); the server runs out of cluster, so it runs no
        // pods: replicas 0.
        kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
            client.clone(),
            NAMESPACE,
        )
        .patch(
            "velero",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "velero", "namespace": NAMESPACE},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"deploy": "velero"}},
                    "template": {
                        "metadata": {"labels": {"deploy": "velero"}},
                        "spec": {"containers": [{
                            "name": "velero",
                            "image": format!("velero/velero:{}", crate::crds::VELERO_BACKUP.version),
                        }]},
                    },
                },
            })),
        )
        .await?;

        let plugins = dir.join("plugins");
        let tmp = dir.join("tmp");
        for d in [&plugins, &tmp] {
            std::fs::create_dir_all(d).map_err(|source| UpstreamError::Io {
                context: format!("creating {}", d.display()),
                source,
            })?;
        }
        // Velero runs every executable in --plugin-dir: the plugin alone.
        let link = plugins.join("velero-plugin-for-aws");
        if !link.exists() {
            std::os::unix::fs::symlink(&bins.aws_plugin, &link).map_err(|source| {
                UpstreamError::Io {
                    context: format!("linking the AWS plugin into {}", plugins.display()),
                    source,
                }
            })?;
        }
        let (metrics_port, profiler_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(&bins.velero);
        cmd.arg("server")
            .args(["--namespace", NAMESPACE])
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .arg("--plugin-dir")
            .arg(&plugins)
            .arg(format!("--metrics-address=127.0.0.1:{metrics_port}"))
            .arg(format!("--profiler-address=127.0.0.1:{profiler_port}"))
            .arg(format!("--store-validation-frequency={STORE_VALIDATION}"))
            .arg("--log-level=info")
            // Credential files from spec.credential go under $TMPDIR/credentials.
            .env("TMPDIR", &tmp)
            .env("HOME", dir)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let server = Daemon::spawn("velero", cmd, dir)?;
        server
            .wait_http_ok(metrics_port, "/metrics", READY_TIMEOUT)
            .await?;
        RUNNING.store(true, Ordering::SeqCst);
        let velero = Self {
            store,
            server,
            bins,
            metrics_port,
        };
        velero
            .wait_location_phase(&client, "default", "Available", READY_TIMEOUT)
            .await?;
        eprintln!(
            "Velero and its S3 store ready in {:.1?} (location default Available)",
            started.elapsed()
        );
        Ok(velero)
    }

    /// The S3 store.
    pub fn store(&self) -> &S3Store {
        &self.store
    }

    /// The server's process.
    pub fn server(&self) -> &Daemon {
        &self.server
    }

    /// The binaries in use.
    pub fn bins(&self) -> &VeleroSet {
        &self.bins
    }

    /// The server's metrics port on 127.0.0.1.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Creates (or updates) a location `name` pointing at `s3_url`, with the
    /// shared credentials; for tests of an unreachable store.
    pub async fn apply_location(
        &self,
        client: &kube::Client,
        name: &str,
        s3_url: &str,
    ) -> Result<(), UpstreamError> {
        apply_location(client, name, s3_url, false).await
    }

    /// Waits until the location `name` reports `phase`; the error carries the
    /// server's log tail.
    pub async fn wait_location_phase(
        &self,
        client: &kube::Client,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> Result<Value, DaemonError> {
        let api = kube::Api::<DynamicObject>::namespaced_with(
            client.clone(),
            NAMESPACE,
            &backup_storage_location_resource(),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Some(why) = self.server.exited() {
                return Err(self.server.not_ready(why));
            }
            if let Ok(Some(o)) = api.get_opt(name).await {
                last = o.data["status"].clone();
                if last["phase"] == phase {
                    return Ok(last);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self.server.not_ready(format!(
                    "BackupStorageLocation {name} not {phase} within {timeout:?} (status {last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last lines of the server's and the store's logs.
    pub fn log_tails(&self, lines: usize) -> String {
        [&self.server, &self.store.daemon]
            .iter()
            .map(|d| {
                format!(
                    "--- {}:\n{}",
                    d.log().display(),
                    crate::process::tail(d.log(), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn apply_location(
    client: &kube::Client,
    name: &str,
    s3_url: &str,
    default: bool,
) -> Result<(), UpstreamError> {
    let ar = backup_storage_location_resource();
    let body = json!({
        "apiVersion": "velero.io/v1",
        "kind": "BackupStorageLocation",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "provider": "aws",
            "default": default,
            "objectStorage": {"bucket": BUCKET},
            "credential": {"name": CREDENTIALS_SECRET, "key": "cloud"},
            "config": {"region": "us-east-1", "s3ForcePathStyle": "true", "s3Url": s3_url},
        },
    });
    kube::Api::<DynamicObject>::namespaced_with(client.clone(), NAMESPACE, &ar)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    Ok(())
}

/// The Velero server beside [`crate::shared`], started on first use in this
/// test binary and stopped when it exits. Panics with the start error.
pub fn shared() -> &'static Velero {
    try_shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`shared`], returning the error instead of panicking.
pub fn try_shared() -> Result<&'static Velero, UpstreamError> {
    static SHARED: OnceLock<Result<Velero, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let cp = crate::try_shared().map_err(|e| e.to_string())?;
            crate::on_own_runtime("vws-shared-velero", move || async move {
                let dir = tempfile::Builder::new()
                    .prefix("vws-velero-")
                    .tempdir()
                    .map_err(|e| format!("creating the Velero temp dir: {e}"))?
                    .keep();
                crate::process::register(Vec::new(), vec![dir.clone()]);
                Velero::start(cp, &dir).await.map_err(|e| e.to_string())
            })
        })
        .as_ref()
        .map_err(|e| UpstreamError::Shared(e.clone()))
}
