//! Opening a connection: credentials → mutual TLS → WebSocket with the v1
//! subprotocol → `Hello` (with the intent versions the cluster holds) →
//! `Welcome`, whose limits then apply to the connection.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vworkspace_crds::well_known::{annotations, labels};
use vworkspace_crds::{ApplicationInstance, Operation};
use vworkspace_protocol::{
    AppliedVersion, Limits, ObjectKind, ObjectRef, SUBPROTOCOL_V1, Welcome, digest,
};

use super::conn::{AGENT_MAX_IN_FLIGHT, Conn};
use super::tls::{classify, client_config, ws_config};
use super::{Tunnel, TunnelError, Violation};
use crate::hub::creds::Credentials;
use crate::hub::enroll;

/// Deadline for TCP + TLS + WebSocket handshake, and for `Welcome`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection the hub has welcomed.
pub(super) struct Opened {
    /// The framed connection, with the limits of `Welcome`.
    pub(super) conn: Conn,
    /// The credentials it was opened with.
    pub(super) creds: Arc<Credentials>,
    /// The hub's `Welcome`.
    pub(super) welcome: Welcome,
}

// === impl Tunnel ===

impl Tunnel {
    /// Loads the credentials and opens a connection up to `Welcome`.
    pub(super) async fn open(&mut self) -> Result<Opened, TunnelError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let creds = Credentials::load(&secrets, &self.namespace, &self.credentials_secret).await?;
        self.redactor.register(&creds.key_pem);
        if let Some(na) = creds.not_after() {
            self.metrics.cert_expiry.set(na);
        }
        if crate::hub::recovery::tunnel_must_wait(&creds) {
            return Err(TunnelError::CertificateExpired);
        }
        let url = match &self.hub_endpoint {
            Some(h) => enroll::tunnel_url_from(h),
            None => creds.tunnel_url.clone(),
        };
        let tls = client_config(&creds)?;
        let limits = Limits::default();
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|source| TunnelError::Url {
                url: url.clone(),
                source,
            })?;
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(SUBPROTOCOL_V1),
        );
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(ws_config(&limits)),
            true,
            Some(Connector::Rustls(Arc::new(tls))),
        );
        let (ws, resp) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| TunnelError::HandshakeTimeout)?
            .map_err(classify)?;
        let proto = resp
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        if proto != Some(SUBPROTOCOL_V1) {
            return Err(Violation::Subprotocol(proto.map(str::to_owned)).into());
        }
        let mut conn = Conn::new(ws, self.metrics.clone(), limits);

        // Hello with what the cluster holds, so the hub resends only newer
        // intents. When it takes several frames, the rest follow `Welcome`
        // if the hub assembles them (it says so with `max_chunks`). A hub
        // that announced bucketed digests to this process before gets an
        // empty `applied`: it reads the versions from the buckets it asks for.
        let summary_hello = self.digest_hubs.knows(&url);
        let mut hellos = if summary_hello {
            conn.summary_hello().into_iter()
        } else {
            let applied = applied_versions(&self.client).await?;
            conn.hello_frames(applied).into_iter()
        };
        if let Some(first) = hellos.next() {
            conn.send(first).await?;
        }
        let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.expect_welcome())
            .await
            .map_err(|_| Violation::NoWelcome)??;
        let rest = hellos.len();
        if rest > 0 && welcome.max_chunks.is_some_and(|m| m as usize > rest) {
            for hello in hellos {
                conn.send(hello).await?;
            }
        }
        if welcome.cluster_id != creds.cluster_id {
            return Err(Violation::WrongCluster {
                bound: welcome.cluster_id,
                credentials: creds.cluster_id.clone(),
            }
            .into());
        }
        conn.limits = limits_from(&welcome);
        let creds = match welcome.ca_bundle_pem.as_deref() {
            Some(bundle) => self.adopt_ca_bundle(creds, bundle).await,
            None => creds,
        };
        conn.max_chunks = welcome.max_chunks.unwrap_or(1).max(1);
        conn.digest_buckets = welcome.digest_buckets.filter(|&m| m >= digest::MIN_BUCKETS);
        self.digest_hubs.record(&url, conn.digest_buckets.is_some());
        tracing::debug!(summary_hello, digest_buckets = ?conn.digest_buckets, "Hub welcomed");
        crate::hub::recovery::on_welcome(
            &self.cluster_status,
            &creds.cluster_id,
            welcome.server_time,
            welcome.recovery_window_secs,
        );
        Ok(Opened {
            conn,
            creds,
            welcome,
        })
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// Stores the CA bundle of `Welcome` with the credentials when it differs
    /// from the stored one (docs/protocol.md §5.1): during a hub CA rotation
    /// this is how an agent learns the new CA before the hub switches to it.
    /// The bundle came over the connection the current bundle authenticated.
    /// An empty or unparsable bundle is ignored.
    async fn adopt_ca_bundle(&self, creds: Arc<Credentials>, bundle: &str) -> Arc<Credentials> {
        use rustls_pki_types::pem::PemObject;
        let new: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        if new.is_empty() {
            tracing::warn!("Ignoring an empty or unparsable CA bundle in Welcome");
            return creds;
        }
        if new == creds.ca_certs() {
            return creds;
        }
        let fingerprints: Vec<String> = new
            .iter()
            .map(|c| hex::encode(ring::digest::digest(&ring::digest::SHA256, c.as_ref())))
            .collect();
        let updated = Credentials {
            ca_pem: bundle.to_owned(),
            ..(*creds).clone()
        };
        let owner = match self
            .cluster_status
            .api()
            .get_opt(self.cluster_status.name())
            .await
        {
            Ok(c) => c.as_ref().and_then(enroll::owner_ref),
            Err(_) => None,
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        match updated
            .store(&secrets, &self.credentials_secret, owner)
            .await
        {
            Ok(()) => {
                tracing::info!(cas = ?fingerprints, "Hub CA bundle updated from Welcome");
                Arc::new(updated)
            }
            Err(error) => {
                tracing::warn!(%error, "Storing the hub CA bundle from Welcome failed");
                creds
            }
        }
    }
}

/// The limits of a connection: the hub's `Welcome`, clamped to what the agent accepts.
pub(super) fn limits_from(w: &Welcome) -> Limits {
    let d = Limits::default();
    let heartbeat = w.heartbeat_secs.clamp(1, d.max_heartbeat_secs);
    let idle = w.idle_timeout_secs.max(heartbeat.saturating_mul(2));
    let frame = usize::try_from(w.max_frame_bytes)
        .unwrap_or(usize::MAX)
        .clamp(4096, d.max_frame_bytes);
    Limits::default()
        .with_heartbeat(heartbeat, idle)
        .with_max_frame_bytes(frame)
        .with_max_in_flight(w.max_in_flight.clamp(1, AGENT_MAX_IN_FLIGHT))
}

/// Reads the applied intent version of every object the hub manages.
pub async fn applied_versions(client: &kube::Client) -> Result<Vec<AppliedVersion>, kube::Error> {
    let selector = format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_CONTROL_PLANE
    );
    let mut out = Vec::new();
    collect_applied(
        &Api::<ApplicationInstance>::all(client.clone()),
        &selector,
        ObjectKind::ApplicationInstance,
        &mut out,
    )
    .await?;
    collect_applied(
        &Api::<Operation>::all(client.clone()),
        &selector,
        ObjectKind::Operation,
        &mut out,
    )
    .await?;
    Ok(out)
}

async fn collect_applied<K>(
    api: &Api<K>,
    selector: &str,
    kind: ObjectKind,
    out: &mut Vec<AppliedVersion>,
) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut lp = ListParams::default().labels(selector).limit(500);
    loop {
        let page = api.list_metadata(&lp).await?;
        for o in &page.items {
            let m = &o.metadata;
            let version = m
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::APPLIED_INTENT_VERSION))
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(ns), Some(name), Some(version)) = (&m.namespace, &m.name, version) {
                out.push(AppliedVersion {
                    object: ObjectRef::new(kind, ns.clone(), name.clone()),
                    version,
                });
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(()),
        }
    }
}
