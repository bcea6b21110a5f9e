//! Enrollment: Cluster object + token Secret → credentials Secret.
//!
//! The reconcile loop watches the cluster-scoped Cluster object and the
//! Secrets of the agent's namespace. When the token it finds differs from the
//! one the current credentials came from (or there are no credentials), it
//! generates a key in the cluster, sends a CSR with the token to the hub's
//! enrollment endpoint over TLS that trusts only the CA pinned in the token,
//! stores key, certificate, CA bundle and signing keys in one Secret owned by
//! the Cluster, and publishes the new identity to the tunnel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;
use vworkspace_crds::cluster::{CredentialStatus, NamespacedName};
use vworkspace_crds::conditions::{self, Status as CondStatus, reasons};
use vworkspace_crds::well_known::values::REGISTRATION_TOKEN_KEY;
use vworkspace_crds::{Cluster, ClusterPhase};
use vworkspace_protocol::enrollment::{
    EnrollError, EnrollErrorCode, EnrollRequest, EnrollResponse,
};
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{JoinToken, ca_sha256_hex, unix_now};

use crate::cluster_status::ClusterStatusWriter;
use crate::creds::{self, Credentials, CredsError};
use crate::logging::Redactor;
use crate::metrics::Metrics;

/// Longest enrollment response accepted.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Deadline of one enrollment request (connect, TLS, HTTP).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Periodic re-check even without a watch event.
const RESYNC: Duration = Duration::from_secs(60);

/// Why one enrollment attempt failed. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollFailure {
    /// The token could not be parsed or has expired.
    #[error("join token is not usable: {0}")]
    Token(#[from] vworkspace_protocol::JoinTokenError),
    /// The hub's certificate chain does not contain the CA pinned in the token.
    #[error("the hub at {0} does not present the CA pinned in the join token")]
    PinMismatch(String),
    /// Network or TLS failure.
    #[error("cannot reach the enrollment endpoint {url}: {message}")]
    Connect {
        /// Endpoint.
        url: String,
        /// Cause.
        message: String,
    },
    /// The hub refused the request.
    #[error("the hub refused enrollment ({code}): {message}")]
    Refused {
        /// Stable code.
        code: EnrollErrorCode,
        /// Hub's message.
        message: String,
    },
    /// The hub's answer is unusable.
    #[error("the hub's enrollment answer is unusable: {0}")]
    BadResponse(String),
    /// Key or CSR generation failed.
    #[error("generating the key or CSR failed: {0}")]
    Key(String),
    /// Writing the credentials failed.
    #[error(transparent)]
    Creds(#[from] CredsError),
}

impl EnrollFailure {
    /// Whether trying the same token again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            EnrollFailure::Connect { .. } | EnrollFailure::Creds(_) => true,
            EnrollFailure::Refused { code, .. } => code.is_retryable(),
            _ => false,
        }
    }

    /// Metric label and Cluster condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollFailure::Token(_) => reasons::JOIN_TOKEN_INVALID,
            EnrollFailure::PinMismatch(_) => reasons::CA_PIN_MISMATCH,
            EnrollFailure::Connect { .. } => reasons::CONTROL_PLANE_UNREACHABLE,
            _ => reasons::REGISTRATION_FAILED,
        }
    }
}

/// A freshly generated key and its CSR. `Debug` hides the key.
pub struct KeyAndCsr {
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// DER SubjectPublicKeyInfo of the key.
    pub spki_der: Vec<u8>,
    /// PEM CSR.
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Generates a P-256 key in the agent and a CSR for it.
pub fn generate_key_and_csr(common_name: &str) -> Result<KeyAndCsr, EnrollFailure> {
    let key = rcgen::KeyPair::generate().map_err(|e| EnrollFailure::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrollFailure::Key(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| EnrollFailure::Key(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
        csr_pem: csr.pem().map_err(|e| EnrollFailure::Key(e.to_string()))?,
    })
}

// === CA-pinned TLS ===

/// Trusts a server only if its presented chain contains the CA whose SHA-256
/// is pinned, and the chain verifies against that CA alone (hostname included).
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    mismatch: std::sync::atomic::AtomicBool,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| ca_sha256_hex(c.as_ref()) == self.pin)
        else {
            self.mismatch
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Splits `https://host[:port]` into host and port.
pub(crate) fn host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), uri.port_u16().unwrap_or(default_port)))
}

/// Sends the enrollment request to the hub named in the token.
pub async fn request_enrollment(
    token: &JoinToken,
    csr_pem: &str,
) -> Result<EnrollResponse, EnrollFailure> {
    let claims = token.claims();
    let url = claims.enroll_url();
    let connect_err = |message: String| EnrollFailure::Connect {
        url: url.clone(),
        message,
    };
    let (host, port) = host_port(&claims.hub_url, 443)
        .ok_or_else(|| connect_err("hub_url is not a valid URL".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        pin: claims.ca_sha256.clone(),
        provider: provider.clone(),
        mismatch: Default::default(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| connect_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name =
        ServerName::try_from(host.clone()).map_err(|_| connect_err("invalid host name".into()))?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.expose_secret().to_owned(),
        csr_pem: csr_pem.to_owned(),
    })
    .map_err(|e| EnrollFailure::Key(e.to_string()))?;
    let path = vworkspace_protocol::enrollment::ENROLL_PATH;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                if verifier.mismatch.load(std::sync::atomic::Ordering::Relaxed) {
                    EnrollFailure::PinMismatch(claims.hub_url.clone())
                } else {
                    connect_err(format!("TLS: {e}"))
                }
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| EnrollFailure::BadResponse("body unreadable or too large".into()))?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            serde_json::from_slice::<EnrollResponse>(&bytes)
                .map_err(|e| EnrollFailure::BadResponse(e.to_string()))
        } else {
            let err = serde_json::from_slice::<EnrollError>(&bytes).unwrap_or(EnrollError {
                code: EnrollErrorCode::Unknown,
                message: format!("HTTP {status}"),
            });
            Err(EnrollFailure::Refused {
                code: err.code,
                // The hub's text: escaped, since it reaches logs and conditions.
                message: vworkspace_protocol::untrusted::escape(&err.message, 300),
            })
        }
    };
    tokio::time::timeout(ENROLL_TIMEOUT, exchange)
        .await
        .map_err(|_| connect_err("timed out".into()))?
}

/// Checks an enrollment answer against the pin and the key we generated.
pub fn check_response(
    resp: &EnrollResponse,
    pin: &str,
    spki_der: &[u8],
) -> Result<(), EnrollFailure> {
    let cas: Vec<_> = CertificateDer::pem_slice_iter(resp.ca_bundle_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if !cas.iter().any(|c| ca_sha256_hex(c.as_ref()) == pin) {
        return Err(EnrollFailure::BadResponse(
            "the CA bundle does not contain the pinned CA".into(),
        ));
    }
    let leaf = CertificateDer::pem_slice_iter(resp.certificate_pem.as_bytes())
        .find_map(Result::ok)
        .ok_or_else(|| EnrollFailure::BadResponse("no certificate".into()))?;
    if creds::cert_spki(leaf.as_ref()).as_deref() != Some(spki_der) {
        return Err(EnrollFailure::BadResponse(
            "the certificate is not for the key this agent generated".into(),
        ));
    }
    if resp.cluster_id.is_empty() || resp.org.is_empty() {
        return Err(EnrollFailure::BadResponse("empty cluster id or org".into()));
    }
    Ok(())
}

use rustls_pki_types::pem::PemObject;

// === the reconcile loop ===

/// Everything enrollment needs.
#[derive(Clone)]
pub struct Enroller {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Agent namespace.
    pub namespace: String,
    /// Credentials Secret name.
    pub credentials_secret: String,
    /// Tunnel URL override.
    pub hub_endpoint: Option<String>,
    /// Cluster status writer.
    pub status: ClusterStatusWriter,
    /// Metrics.
    pub metrics: Metrics,
    /// Secrets to keep out of logs.
    pub redactor: Redactor,
    /// Publishes the identity the tunnel should use.
    pub creds_tx: watch::Sender<Option<Arc<Credentials>>>,
}

enum Next {
    Idle,
    Retry(Duration),
}

impl Enroller {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut token_secret: Option<String> = None;
        let mut triggers = self.triggers(token_secret.as_deref());
        let mut failed: Option<(String, u32)> = None;
        loop {
            let seen = token_secret.clone();
            let next = self.reconcile(&mut failed, &mut token_secret).await;
            if token_secret != seen {
                // The Cluster names another token Secret: watch that one instead.
                triggers = self.triggers(token_secret.as_deref());
            }
            let (wait, wake_on_events) = match next {
                Next::Idle => (RESYNC, true),
                // Backing off: our own status write is a watch event too, so
                // events must not cut the backoff short.
                Next::Retry(d) => (d, false),
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = crate::signaled(&mut shutdown) => return,
                    _ = &mut sleep => break,
                    ev = triggers.next() => {
                        if ev.is_none() { return; }
                        if wake_on_events {
                            // Coalesce a burst of events into one reconcile.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Events that make enrollment look again: the Cluster object, our
    /// credentials Secret and the token Secret the Cluster names. Each is
    /// watched by name, because the chart grants Secrets by name only (a
    /// namespace-wide Secret watch would be refused, and would read other
    /// Secrets' values for no reason).
    fn triggers(&self, token_secret: Option<&str>) -> futures::stream::BoxStream<'static, ()> {
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let clusters: Api<Cluster> = Api::all(self.client.clone());
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut streams = vec![
            watcher(clusters, by_name(self.status.name()))
                .default_backoff()
                .map(|_| ())
                .boxed(),
            watcher(secrets.clone(), by_name(&self.credentials_secret))
                .default_backoff()
                .map(|_| ())
                .boxed(),
        ];
        if let Some(name) = token_secret.filter(|n| *n != self.credentials_secret) {
            streams.push(
                watcher(secrets, by_name(name))
                    .default_backoff()
                    .map(|_| ())
                    .boxed(),
            );
        }
        futures::stream::select_all(streams).boxed()
    }

    async fn reconcile(
        &self,
        failed: &mut Option<(String, u32)>,
        token_secret: &mut Option<String>,
    ) -> Next {
        match self.try_reconcile(failed, token_secret).await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "Enrollment reconcile failed");
                Next::Retry(Duration::from_secs(5))
            }
        }
    }

    async fn try_reconcile(
        &self,
        failed: &mut Option<(String, u32)>,
        token_secret: &mut Option<String>,
    ) -> Result<Next, kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(cluster) = self.status.api().get_opt(self.status.name()).await? else {
            tracing::info!(cluster = %self.status.name(), "Waiting for the Cluster object");
            self.creds_tx.send_replace(None);
            return Ok(Next::Idle);
        };
        *token_secret = cluster
            .spec
            .registration_token_secret_ref
            .as_ref()
            .map(|r| r.name.clone());
        let token = self.resolve_token(&cluster, &secrets).await?;
        let existing =
            match Credentials::load(&secrets, &self.namespace, &self.credentials_secret).await {
                Ok(c) => Some(c),
                Err(CredsError::Missing { .. }) => None,
                Err(CredsError::Kube(e)) => return Err(e),
                Err(error) => {
                    tracing::warn!(%error, "Ignoring unusable credentials Secret");
                    None
                }
            };
        if let Some(c) = &existing {
            self.redactor.register(&c.key_pem);
        }
        let fingerprint = token.as_deref().map(creds::token_fingerprint);
        let up_to_date = match (&existing, &fingerprint) {
            (Some(c), Some(fp)) => c.token_fingerprint.as_deref().is_none_or(|f| f == fp),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if up_to_date {
            let c = existing.clone().expect("up_to_date implies credentials");
            // --- certificate recovery (crate::recovery) ---
            let outcome = crate::recovery::check(
                &c,
                self.hub_endpoint.as_deref(),
                &secrets,
                &self.credentials_secret,
                owner_ref(&cluster),
                &self.status,
            )
            .await?;
            let next = match outcome {
                crate::recovery::Outcome::Valid(left) => match left {
                    Some(d) if d < RESYNC => Next::Retry(d),
                    _ => Next::Idle,
                },
                crate::recovery::Outcome::Recovered(new) => {
                    // Same identity, new certificate: wake the tunnel anyway.
                    self.redactor.register(&new.key_pem);
                    self.creds_tx.send_replace(Some(new));
                    return Ok(Next::Idle);
                }
                crate::recovery::Outcome::Retry(d) => Next::Retry(d),
                crate::recovery::Outcome::GaveUp => Next::Idle,
            };
            // --- end certificate recovery ---
            self.publish(c);
            return Ok(next);
        }
        let Some(token) = token else {
            self.status
                .update(|s| {
                    s.phase = Some(ClusterPhase::Pending);
                    let g = s.observed_generation;
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::authenticated(
                            CondStatus::False,
                            reasons::TOKEN_SECRET_MISSING,
                            "no join token: set spec.registrationTokenSecretRef to a Secret in the agent namespace",
                            g,
                        ),
                    );
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::connected(
                            CondStatus::False,
                            reasons::REGISTRATION_PENDING,
                            "waiting for a join token",
                            g,
                        ),
                    );
                })
                .await?;
            return Ok(Next::Idle);
        };
        let fp = fingerprint.unwrap_or_default();
        // A token that failed for good is not retried until it changes.
        if let Some((f, attempts)) = failed.as_ref()
            && *f == fp
            && *attempts == u32::MAX
        {
            if let Some(c) = existing {
                self.publish(c);
            }
            return Ok(Next::Idle);
        }
        self.status
            .update(|s| {
                if existing.is_none() {
                    s.phase = Some(ClusterPhase::Registering);
                }
            })
            .await?;
        match self.enroll(&cluster, &token, &fp, &secrets).await {
            Ok(c) => {
                *failed = None;
                self.metrics.enrollment("ok");
                let ns = self.namespace.clone();
                let name = self.credentials_secret.clone();
                let not_after = c.not_after().and_then(time_from_unix);
                let (cid, org) = (c.cluster_id.clone(), c.org.clone());
                self.status
                    .update(|s| {
                        if s.phase != Some(ClusterPhase::Connected) {
                            s.phase = Some(ClusterPhase::Registering);
                        }
                        s.observed_token = Some(fp.clone());
                        s.cluster_id = Some(cid);
                        s.org = Some(org);
                        s.certificate_not_after = not_after;
                        s.credentials_secret_ref = Some(NamespacedName {
                            name: name.clone(),
                            namespace: ns.clone(),
                        });
                        s.credential_status = Some(CredentialStatus {
                            secret_name: Some(name),
                            secret_namespace: Some(ns),
                            registered_at: Some(conditions::now()),
                            registration_token_consumed: Some(true),
                        });
                        let g = s.observed_generation;
                        conditions::set_condition(
                            &mut s.conditions,
                            conditions::authenticated(
                                CondStatus::True,
                                reasons::REGISTRATION_COMPLETE,
                                "the hub issued a client certificate",
                                g,
                            ),
                        );
                    })
                    .await?;
                if cluster.spec.cluster_id.as_deref().is_none_or(str::is_empty) {
                    self.fill_cluster_id(&c.cluster_id).await;
                }
                tracing::info!(cluster_id = %escape(&c.cluster_id, 253), org = %escape(&c.org, 253), "Enrolled with the hub");
                self.publish(c);
                Ok(Next::Idle)
            }
            Err(error) => {
                let retryable = error.is_retryable();
                self.metrics.enrollment(error.reason());
                tracing::warn!(%error, retryable, "Enrollment failed");
                let attempts = match failed.as_ref() {
                    Some((f, n)) if *f == fp => n.saturating_add(1),
                    _ => 1,
                };
                *failed = Some((fp, if retryable { attempts } else { u32::MAX }));
                let message = error.to_string();
                let reason = error.reason();
                let had_creds = existing.is_some();
                self.status
                    .update(|s| {
                        let g = s.observed_generation;
                        if !had_creds {
                            s.phase = Some(ClusterPhase::Error);
                            conditions::set_condition(
                                &mut s.conditions,
                                conditions::connected(
                                    CondStatus::False,
                                    reasons::REGISTRATION_PENDING,
                                    "enrollment has not completed",
                                    g,
                                ),
                            );
                        }
                        conditions::set_condition(
                            &mut s.conditions,
                            conditions::authenticated(CondStatus::False, reason, message, g),
                        );
                    })
                    .await?;
                if let Some(c) = existing {
                    self.publish(c);
                }
                if retryable {
                    Ok(Next::Retry(crate::backoff::full_jitter(
                        Duration::from_secs(2),
                        Duration::from_secs(300),
                        attempts,
                    )))
                } else {
                    Ok(Next::Idle)
                }
            }
        }
    }

    /// Records the issued id in `spec.clusterId` when it is empty, as upstream
    /// does. Not forced: an id someone else set is left alone.
    async fn fill_cluster_id(&self, id: &str) {
        let body = serde_json::json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": self.status.name()},
            "spec": {"clusterId": id},
        });
        let pp = kube::api::PatchParams::apply(crate::FIELD_MANAGER);
        if let Err(error) = self
            .status
            .api()
            .patch(self.status.name(), &pp, &kube::api::Patch::Apply(body))
            .await
        {
            tracing::warn!(%error, "Failed to record spec.clusterId");
        }
    }

    fn publish(&self, c: Arc<Credentials>) {
        if let Some(na) = c.not_after() {
            self.metrics.cert_expiry.set(na);
        }
        self.creds_tx.send_if_modified(|cur| {
            let same = cur.as_ref().is_some_and(|old| {
                old.cluster_id == c.cluster_id
                    && old.token_fingerprint == c.token_fingerprint
                    && old.tunnel_url == c.tunnel_url
            });
            if !same {
                *cur = Some(c);
            }
            !same
        });
    }

    async fn resolve_token(
        &self,
        cluster: &Cluster,
        secrets: &Api<Secret>,
    ) -> Result<Option<String>, kube::Error> {
        if let Some(r) = &cluster.spec.registration_token_secret_ref {
            let key = r.key.as_deref().unwrap_or(REGISTRATION_TOKEN_KEY);
            let token = secrets
                .get_opt(&r.name)
                .await?
                .and_then(|s| s.data)
                .and_then(|d| d.get(key).cloned())
                .and_then(|b| String::from_utf8(b.0).ok())
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
            if let Some(t) = &token {
                self.redactor.register(t);
            }
            return Ok(token);
        }
        let inline = cluster
            .spec
            .registration_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if let Some(t) = &inline {
            self.redactor.register(t);
        }
        Ok(inline)
    }

    async fn enroll(
        &self,
        cluster: &Cluster,
        raw: &str,
        fingerprint: &str,
        secrets: &Api<Secret>,
    ) -> Result<Arc<Credentials>, EnrollFailure> {
        let token = JoinToken::parse(raw, unix_now())?;
        let claims = token.claims().clone();
        let kc = generate_key_and_csr(&claims.cluster)?;
        self.redactor.register(&kc.key_pem);
        // Claims of an unverified token: escaped like any peer text.
        tracing::info!(
            hub = %escape(&claims.hub_url, 253),
            cluster = %escape(&claims.cluster, 253),
            org = %escape(&claims.org, 253),
            jti = %escape(&claims.jti, 253),
            "Enrolling with the hub"
        );
        let resp = request_enrollment(&token, &kc.csr_pem).await?;
        check_response(&resp, &claims.ca_sha256, &kc.spki_der)?;
        let tunnel_url = match &self.hub_endpoint {
            Some(h) => tunnel_url_from(h),
            None => resp.tunnel_url.clone(),
        };
        let c = Credentials {
            key_pem: kc.key_pem,
            cert_pem: resp.certificate_pem,
            ca_pem: resp.ca_bundle_pem,
            signing_keys: resp.signing_keys,
            cluster_id: resp.cluster_id,
            org: resp.org,
            tunnel_url,
            hub_url: claims.hub_url,
            token_fingerprint: Some(fingerprint.to_owned()),
            received_at: Some(vworkspace_protocol::unix_now()),
        };
        c.store(secrets, &self.credentials_secret, owner_ref(cluster))
            .await?;
        Ok(Arc::new(c))
    }
}

/// `wss://HOST:PORT/v1/tunnel` from an `https://` or `wss://` base URL.
pub fn tunnel_url_from(base: &str) -> String {
    if base.contains(vworkspace_protocol::TUNNEL_PATH) {
        return base.to_owned();
    }
    let rest = base
        .trim_end_matches('/')
        .trim_start_matches("https://")
        .trim_start_matches("wss://");
    format!("wss://{rest}{}", vworkspace_protocol::TUNNEL_PATH)
}

/// Controller owner reference to the Cluster object.
pub fn owner_ref(cluster: &Cluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// A Unix time as a metav1 Time.
pub fn time_from_unix(secs: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_urls_are_derived_from_hub_urls() {
        assert_eq!(
            tunnel_url_from("https://hub.example:8443/"),
            "wss://hub.example:8443/v1/tunnel"
        );
        assert_eq!(tunnel_url_from("wss://h/v1/tunnel"), "wss://h/v1/tunnel");
    }

    #[test]
    fn a_hub_url_without_a_port_gives_a_tunnel_url_without_one_on_443() {
        assert_eq!(
            tunnel_url_from("https://hub.example"),
            "wss://hub.example/v1/tunnel"
        );
        assert_eq!(
            host_port(&tunnel_url_from("https://hub.example"), 443),
            Some(("hub.example".into(), 443))
        );
    }

    /// A CA and a server leaf it signed for `hub.example`.
    fn ca_and_leaf() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["hub.example".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        (ca.der().clone(), leaf.der().clone())
    }

    #[test]
    fn a_leaf_only_chain_is_refused_even_when_the_pinned_ca_signed_it() {
        let (ca, leaf) = ca_and_leaf();
        let verifier = PinnedCaVerifier {
            pin: ca_sha256_hex(ca.as_ref()),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            mismatch: std::sync::atomic::AtomicBool::new(false),
        };
        let name = ServerName::try_from("hub.example").unwrap();
        let now = UnixTime::now();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], now)
                .is_err(),
            "the pinned CA must be in the presented chain"
        );
        assert!(verifier.mismatch.load(std::sync::atomic::Ordering::Relaxed));
        verifier
            .verify_server_cert(&leaf, std::slice::from_ref(&ca), &name, &[], now)
            .expect("leaf followed by the pinned CA is accepted");
    }

    #[test]
    fn host_and_port_are_parsed() {
        assert_eq!(
            host_port("https://127.0.0.1:8443", 443),
            Some(("127.0.0.1".into(), 8443))
        );
        assert_eq!(host_port("https://hub", 443), Some(("hub".into(), 443)));
        assert_eq!(host_port("wss://[::1]:9/x", 443), Some(("::1".into(), 9)));
    }

    #[test]
    fn generated_csr_names_the_cluster_and_hides_the_key_in_debug() {
        let kc = generate_key_and_csr("edge-1").unwrap();
        assert!(
            kc.csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        assert!(kc.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{kc:?}").contains("PRIVATE"));
    }
}
