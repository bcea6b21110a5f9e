//! Expired-certificate recovery and the hub's view of time.
//!
//! A cluster that was offline past its certificate's expiry cannot open the
//! tunnel (the hub refuses the certificate in the handshake), so renewal over
//! the tunnel is impossible. Instead the agent sends `POST /v1/recover` with
//! the expired certificate, a CSR for a fresh key and a signature by the old
//! key over both (docs/protocol.md, section 4.2). The hub answers with a new
//! certificate while the expiry lies within its recovery window and the
//! identity is not revoked. Refusals are final for that certificate: the
//! Cluster condition names the reason and the operator's command, and nothing
//! is retried until the credentials or the join token change. Unreachable hubs
//! are retried with jittered backoff.
//!
//! Expiry is judged on the hub's clock as last seen in `Welcome` (own clock
//! plus the measured offset), so a cluster whose clock runs ahead does not
//! mistake a valid certificate for an expired one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateSigningRequestDer, PrivateKeyDer, ServerName};
use vworkspace_crds::conditions::{self, Status as CondStatus, reasons};
use vworkspace_protocol::enrollment::EnrollErrorCode;
use vworkspace_protocol::recovery::{self, RecoverRequest, RecoverResponse};
use vworkspace_protocol::unix_now;

use crate::hub::cluster_status::ClusterStatusWriter;
use crate::hub::creds::{self, Credentials};
use crate::hub::enroll::{BadResponse, ConnectCause, EnrollFailure};

/// Longest recovery answer accepted.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Deadline of one recovery request.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff bounds while the hub is unreachable.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Beyond this difference from the hub's clock the Cluster says `ClockSkew=True`
/// (half the intent skew allowance, so it shows before intents fail).
pub const CLOCK_SKEW_THRESHOLD_SECS: i64 = 30;

/// What the agent knows about one cluster identity; one entry per cluster id
/// this process serves (one in production).
#[derive(Clone, Debug, Default)]
struct State {
    /// `hub clock − own clock` measured at the last `Welcome`.
    offset_secs: i64,
    /// Window the hub announced in `Welcome`; `None` before the first
    /// connection or from a hub without recovery.
    window_secs: Option<u64>,
    /// Recovery attempts for the current certificate.
    attempts: u32,
    /// Serial of a certificate the hub refused to recover for good.
    gave_up: Option<String>,
}

fn states() -> &'static Mutex<HashMap<String, State>> {
    static STATES: std::sync::OnceLock<Mutex<HashMap<String, State>>> = std::sync::OnceLock::new();
    STATES.get_or_init(Default::default)
}

fn with_state<T>(cluster_id: &str, f: impl FnOnce(&mut State) -> T) -> T {
    let mut map = states().lock().unwrap_or_else(|p| p.into_inner());
    f(map.entry(cluster_id.to_owned()).or_default())
}

/// The hub's current time as this agent best knows it.
pub fn hub_now(cluster_id: &str) -> i64 {
    unix_now() + with_state(cluster_id, |s| s.offset_secs)
}

/// Hex serial of the leaf certificate (identifies "the current certificate").
fn leaf_serial(c: &Credentials) -> Option<String> {
    let leaf = c.certs().into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// Whether these credentials' certificate has expired by the hub's clock.
pub fn expired(c: &Credentials) -> bool {
    c.not_after().is_some_and(|na| hub_now(&c.cluster_id) > na)
}

/// Whether the tunnel should not dial with these credentials: the
/// certificate has expired (the hub would refuse the handshake) and the
/// enrollment loop is recovering it or has given up on it.
pub fn tunnel_must_wait(c: &Credentials) -> bool {
    expired(c)
}

/// Called with every `Welcome`: records the hub's clock and recovery window,
/// and sets the `ClockSkew` condition.
pub fn on_welcome(
    status: &ClusterStatusWriter,
    cluster_id: &str,
    server_time: i64,
    window_secs: Option<u64>,
) {
    let offset = server_time - unix_now();
    with_state(cluster_id, |s| {
        s.offset_secs = offset;
        s.window_secs = window_secs;
    });
    match window_secs {
        Some(w) => tracing::info!(
            recovery_window_secs = w,
            clock_offset_secs = offset,
            "Hub recovers expired certificates within its window"
        ),
        None => tracing::info!(
            clock_offset_secs = offset,
            "Hub announces no certificate recovery; an expired certificate needs a new join token"
        ),
    }
    let skewed = offset.abs() > CLOCK_SKEW_THRESHOLD_SECS;
    if skewed {
        tracing::warn!(
            clock_offset_secs = offset,
            threshold_secs = CLOCK_SKEW_THRESHOLD_SECS,
            "This cluster's clock disagrees with the hub's"
        );
    }
    let status = status.clone();
    tokio::spawn(async move {
        let r = status
            .update(|s| {
                let g = s.observed_generation;
                let c = if skewed {
                    let dir = if offset > 0 { "behind" } else { "ahead of" };
                    conditions::clock_skew(
                        CondStatus::True,
                        reasons::CLOCK_SKEW_DETECTED,
                        format!(
                            "this cluster's clock is {}s {dir} the hub's (threshold {CLOCK_SKEW_THRESHOLD_SECS}s); intent and certificate times are judged on the hub's clock, fix NTP on the nodes",
                            offset.abs()
                        ),
                        g,
                    )
                } else {
                    conditions::clock_skew(
                        CondStatus::False,
                        reasons::CLOCK_IN_SYNC,
                        format!("within {CLOCK_SKEW_THRESHOLD_SECS}s of the hub's clock"),
                        g,
                    )
                };
                conditions::set_condition(&mut s.conditions, c);
            })
            .await;
        if let Err(error) = r {
            tracing::warn!(%error, "Failed to record the ClockSkew condition");
        }
    });
}

/// What the enrollment loop does next.
#[derive(Debug)]
pub enum Outcome {
    /// The certificate is valid: carry on; look again after this long.
    Valid(Option<Duration>),
    /// New credentials are stored.
    Recovered(Arc<Credentials>),
    /// The hub could not be reached; try again after this long.
    Retry(Duration),
    /// The hub refused for good; the condition says what to do.
    GaveUp,
}

/// Recovers `c` if its certificate has expired. `hub_endpoint` overrides the
/// hub address as for the tunnel.
pub async fn check(
    c: &Credentials,
    hub_endpoint: Option<&str>,
    secrets: &Api<Secret>,
    secret_name: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    status: &ClusterStatusWriter,
) -> Result<Outcome, kube::Error> {
    let Some(not_after) = c.not_after() else {
        return Ok(Outcome::Valid(None));
    };
    let now = hub_now(&c.cluster_id);
    if now <= not_after {
        with_state(&c.cluster_id, |s| s.attempts = 0);
        let left = Duration::from_secs((not_after - now) as u64 + 1);
        return Ok(Outcome::Valid(Some(left)));
    }
    let serial = leaf_serial(c).unwrap_or_default();
    if with_state(&c.cluster_id, |s| {
        s.gave_up.as_deref() == Some(serial.as_str())
    }) {
        return Ok(Outcome::GaveUp);
    }
    let (attempts, window) = with_state(&c.cluster_id, |s| {
        s.attempts = s.attempts.saturating_add(1);
        (s.attempts, s.window_secs)
    });
    let window_text = window
        .map(|w| format!("; the hub recovers within {w}s of expiry"))
        .unwrap_or_default();
    tracing::info!(
        serial = %serial,
        expired_for_secs = now - not_after,
        attempt = attempts,
        "Client certificate expired; recovering it with the cluster's key"
    );
    let base = hub_endpoint.unwrap_or(&c.hub_url).to_owned();
    match request(c, &base).await {
        Ok((new, window)) => {
            new.store(secrets, secret_name, owner)
                .await
                .map_err(|e| match e {
                    creds::CredsError::Kube(k) => k,
                    other => kube::Error::Service(other.to_string().into()),
                })?;
            with_state(&c.cluster_id, |s| {
                s.attempts = 0;
                s.window_secs = Some(window);
            });
            let na = new.not_after().unwrap_or_default();
            tracing::info!(old_serial = %serial, not_after = na, recovery_window_secs = window, "Client certificate recovered");
            status
                .update(|s| {
                    s.certificate_not_after = crate::hub::enroll::time_from_unix(na);
                    let g = s.observed_generation;
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::authenticated(
                            CondStatus::True,
                            reasons::CERTIFICATE_RECOVERED,
                            format!(
                                "the certificate had expired {}s ago; the hub issued a new one against the cluster's key",
                                now - not_after
                            ),
                            g,
                        ),
                    );
                })
                .await?;
            Ok(Outcome::Recovered(Arc::new(new)))
        }
        Err(error) if error.is_retryable() => {
            // `POST /v1/recover` shares the enrollment rate limits: a 429's
            // Retry-After is obeyed like enrollment's.
            let paced = error.retry_after();
            let d = crate::hub::backoff::after_failure(paced, BACKOFF_MIN, BACKOFF_MAX, attempts);
            if paced.is_some() {
                tracing::info!(attempt = attempts, delay = ?d, "Certificate recovery paced by the hub; retrying when it asked");
            } else {
                tracing::warn!(%error, attempt = attempts, delay = ?d, "Certificate recovery failed; retrying");
            }
            if error.hub_ca_unknown() {
                status
                    .hub_ca_unknown(&crate::hub::tunnel::hub_ca_unknown_message(c))
                    .await?;
            }
            let message = match paced {
                Some(r) => format!(
                    "the client certificate expired at {not_after} (hub clock){window_text}; the hub is pacing recoveries and asked to retry in {} s; retrying in {} s (attempt {attempts})",
                    r.as_secs(),
                    d.as_secs()
                ),
                None => format!(
                    "the client certificate expired at {not_after} (hub clock){window_text}; recovery attempt {attempts} failed, retrying: {error}"
                ),
            };
            let reason = if paced.is_some() {
                reasons::RATE_LIMITED
            } else {
                reasons::CREDENTIAL_EXPIRED
            };
            set_authenticated(status, reason, message).await?;
            Ok(Outcome::Retry(d))
        }
        Err(error) => {
            let (reason, what) = match &error {
                RecoverFailure::Enroll(EnrollFailure::Refused {
                    code: EnrollErrorCode::ClusterRevoked,
                    ..
                }) => (reasons::IDENTITY_REVOKED, "the hub revoked this cluster"),
                RecoverFailure::Enroll(EnrollFailure::Refused {
                    code: EnrollErrorCode::RecoveryWindowPassed,
                    ..
                }) => (
                    reasons::RECOVERY_WINDOW_PASSED,
                    "the certificate expired longer ago than the hub's recovery window",
                ),
                _ => (
                    reasons::RECOVERY_REFUSED,
                    "the hub refused to recover the certificate",
                ),
            };
            tracing::warn!(%error, reason, "Certificate recovery refused; waiting for a new join token");
            with_state(&c.cluster_id, |s| s.gave_up = Some(serial.clone()));
            let message = format!(
                "{what} ({error}); expired at {not_after}{window_text}. Issue a new join token at the hub (hub-sim: `hub-sim token create --cluster {} --org {}`, which also lifts a revocation) and put it into the Secret named by spec.registrationTokenSecretRef",
                c.cluster_id, c.org
            );
            set_authenticated(status, reason, message).await?;
            Ok(Outcome::GaveUp)
        }
    }
}

async fn set_authenticated(
    status: &ClusterStatusWriter,
    reason: &'static str,
    message: String,
) -> Result<bool, kube::Error> {
    status
        .update(|s| {
            let g = s.observed_generation;
            conditions::set_condition(
                &mut s.conditions,
                conditions::authenticated(CondStatus::False, reason, message, g),
            );
        })
        .await
}

/// Why one recovery request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverFailure {
    /// Reaching the hub, its refusal, or its answer (as for enrollment).
    #[error(transparent)]
    Enroll(#[from] EnrollFailure),
    /// The stored credentials hold no certificate or no PKCS#8 key.
    #[error("the credentials Secret holds no certificate or no PKCS#8 key")]
    Credentials,
    /// The new CSR does not parse back (our bug).
    #[error("the generated CSR does not parse: {0}")]
    Csr(rustls_pki_types::pem::Error),
    /// The proof of possession could not be made with the stored key.
    #[error("signing the proof of possession: {0}")]
    Proof(#[from] recovery::RecoveryError),
    /// The hub answered for another cluster or organisation.
    #[error("the hub answered for another cluster")]
    OtherCluster,
}

impl RecoverFailure {
    /// Whether another attempt may succeed (the hub was not reached).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Enroll(e) if e.is_retryable())
    }

    /// The hub's `Retry-After` of a `429 rate_limited`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Enroll(e) if e.is_paced() => e.retry_after(),
            _ => None,
        }
    }

    /// Whether the TLS handshake failed because the hub's certificate does
    /// not chain to a CA of the stored bundle.
    pub fn hub_ca_unknown(&self) -> bool {
        match self {
            Self::Enroll(EnrollFailure::Connect {
                cause: ConnectCause::Tls(io),
                ..
            }) => crate::hub::tunnel::server_ca_unknown(io),
            _ => false,
        }
    }
}

/// One `POST /v1/recover` round trip; returns the new credentials (not yet
/// stored) and the hub's window.
async fn request(c: &Credentials, base: &str) -> Result<(Credentials, u64), RecoverFailure> {
    let url = format!("{}{}", base.trim_end_matches('/'), recovery::RECOVER_PATH);
    let connect_err = |cause: ConnectCause| -> RecoverFailure {
        EnrollFailure::Connect {
            url: url.clone(),
            cause,
        }
        .into()
    };
    let (host, port) = crate::hub::enroll::host_port(base, 443)
        .ok_or_else(|| connect_err(ConnectCause::BadUrl))?;
    let leaf = c
        .certs()
        .into_iter()
        .next()
        .ok_or(RecoverFailure::Credentials)?;
    let key = match c.key() {
        Ok(PrivateKeyDer::Pkcs8(k)) => k,
        _ => return Err(RecoverFailure::Credentials),
    };
    let kc = crate::hub::enroll::generate_key_and_csr(&c.cluster_id)?;
    let csr_der = CertificateSigningRequestDer::from_pem_slice(kc.csr_pem.as_bytes())
        .map_err(RecoverFailure::Csr)?;
    let input = recovery::signing_input(leaf.as_ref(), csr_der.as_ref());
    let proof = recovery::sign_proof(key.secret_pkcs8_der(), &input)?;
    let body = serde_json::to_vec(&RecoverRequest {
        certificate_pem: c.cert_pem.clone(),
        csr_pem: kc.csr_pem.clone(),
        proof_hex: hex::encode(proof),
    })
    .map_err(EnrollFailure::Encode)?;

    let mut roots = rustls::RootCertStore::empty();
    for ca in c.ca_certs() {
        roots
            .add(ca)
            .map_err(|e| connect_err(ConnectCause::TlsConfig(e)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| connect_err(ConnectCause::TlsConfig(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name =
        ServerName::try_from(host.clone()).map_err(|_| connect_err(ConnectCause::BadHostName))?;
    let exchange = async {
        let tcp: tokio::net::TcpStream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| connect_err(ConnectCause::Tcp(e)))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect_err(ConnectCause::Tls(e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(ConnectCause::Http(e)))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::post(recovery::RECOVER_PATH)
            .header(http::header::HOST, format!("{host}:{port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(ConnectCause::Request(e)))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(ConnectCause::Http(e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| EnrollFailure::BadResponse(BadResponse::Body))?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            serde_json::from_slice::<RecoverResponse>(&bytes)
                .map_err(|e| RecoverFailure::from(EnrollFailure::BadResponse(BadResponse::Json(e))))
        } else if status == http::StatusCode::NOT_FOUND {
            // A hub from before recovery: final, like a refusal.
            Err(EnrollFailure::Refused {
                code: EnrollErrorCode::RecoveryRefused,
                message: "the hub does not offer certificate recovery (404)".into(),
                retry_after: None,
            }
            .into())
        } else {
            Err(crate::hub::enroll::refusal(status, &headers, &bytes).into())
        }
    };
    let resp = tokio::time::timeout(RECOVER_TIMEOUT, exchange)
        .await
        .map_err(|_| connect_err(ConnectCause::Timeout))??;
    let e = &resp.enrolled;
    let new_leaf = rustls_pki_types::CertificateDer::pem_slice_iter(e.certificate_pem.as_bytes())
        .find_map(Result::ok)
        .ok_or(EnrollFailure::BadResponse(BadResponse::NoCertificate))?;
    if creds::cert_spki(new_leaf.as_ref()).as_deref() != Some(kc.spki_der.as_slice()) {
        return Err(EnrollFailure::BadResponse(BadResponse::ForeignKey).into());
    }
    if e.cluster_id != c.cluster_id || e.org != c.org {
        return Err(RecoverFailure::OtherCluster);
    }
    let new = Credentials {
        key_pem: kc.key_pem.clone(),
        cert_pem: e.certificate_pem.clone(),
        ca_pem: e.ca_bundle_pem.clone(),
        signing_keys: e.signing_keys.clone(),
        received_at: Some(unix_now()),
        ..c.clone()
    };
    Ok((new, resp.recovery_window_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_clock_offset_moves_expiry() {
        with_state("skewed-cluster", |s| s.offset_secs = -86_400);
        assert!(hub_now("skewed-cluster") < unix_now() - 86_000);
        assert!(hub_now("another-cluster") >= unix_now() - 1);
    }
}
