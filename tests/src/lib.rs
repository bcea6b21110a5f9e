//! Test harness: a real kube-apiserver + etcd (envtest style) and the upstream CRDs.
//!
//! Typical use from any crate's integration test:
//!
//! ```no_run
//! # async fn t() {
//! let cp = vworkspace_e2e::shared(); // one control plane per test binary
//! let client = cp.client().unwrap(); // fresh client on this test's runtime
//! let ns = vworkspace_e2e::test_namespace(&client, "my-test").await.unwrap();
//! # }
//! ```
//!
//! Binaries come from `KUBEBUILDER_ASSETS` / `TEST_ASSET_*` or are built once from
//! Go modules into a cache (see [`assets`]). When neither works, [`shared`]
//! panics with a message saying how to fix it: tests never skip.

// Unsafe code is denied except where libc is called (process groups,
// parent-death signals, file locks), each module saying so.
#![deny(unsafe_code, rust_2018_idioms)]

#[allow(unsafe_code)] // flock on the shared binary cache
pub mod assets;
mod certs;
pub mod controlplane;
pub mod crds;
pub mod daemon;
pub mod deploy;
pub mod duration;
pub mod e2e;
pub mod helm;
#[allow(unsafe_code)] // setpgid, prctl(PR_SET_PDEATHSIG), kill
mod process;
pub mod standins;
pub mod upstream;
pub mod wait;

pub use controlplane::{ControlPlane, Error};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The control plane shared by every test in this test binary, started on first use.
///
/// It runs until the process exits (an exit hook and PDEATHSIG kill it). Panics
/// with the start error (including how to provide the binaries) if it cannot start.
pub fn shared() -> &'static ControlPlane {
    try_shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`shared`], returning the error instead of panicking.
pub fn try_shared() -> Result<&'static ControlPlane, Error> {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            // The caller may be inside any runtime, and nothing of the
            // instance may be tied to one.
            on_own_runtime("vws-shared-controlplane", || async {
                ControlPlane::start().await.map_err(|e| e.to_string())
            })
        })
        .as_ref()
        .map_err(|e| Error::Shared(e.clone()))
}

/// Runs `start` to completion on a thread with a runtime of its own, for the
/// statics shared by a test binary: what they start must outlive every test's
/// runtime. Errors are strings so the result can be kept in a `OnceLock`.
pub(crate) fn on_own_runtime<T, F, Fut>(name: &str, start: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("building a tokio runtime: {e}"))?
                .block_on(start())
        })
        .map_err(|e| format!("spawning the start thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err(format!("{name} panicked while starting")))
}

/// A fresh admin client for the shared control plane, on the caller's runtime.
pub fn shared_client() -> kube::Client {
    shared()
        .client()
        .unwrap_or_else(|e| panic!("building a client for the shared control plane: {e}"))
}

/// The label the agent selects managed namespaces by (DESIGN.md).
pub const MANAGED_BY: (&str, &str) = ("managed-by", "vworkspace");

/// Creates a namespace `<prefix>-<random>` labelled [`MANAGED_BY`] and returns its name.
///
/// Each test works in its own namespace, so tests sharing one control plane
/// do not see each other's objects.
pub async fn test_namespace(client: &kube::Client, prefix: &str) -> Result<String, kube::Error> {
    test_namespace_with_labels(client, prefix, &[MANAGED_BY]).await
}

/// Like [`test_namespace`] with the given labels only (pass `&[]` for none).
pub async fn test_namespace_with_labels(
    client: &kube::Client,
    prefix: &str,
    labels: &[(&str, &str)],
) -> Result<String, kube::Error> {
    let suffix: u32 = rand::random();
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let name = format!("{}-{:08x}", prefix.trim_matches('-'), suffix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    kube::Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}
