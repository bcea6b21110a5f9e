//! The enrollment request: a key and CSR generated in the agent, sent with
//! the join token to the hub over TLS that trusts only the CA pinned in the
//! token, and the answer checked before anything is stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use vworkspace_crds::conditions::reasons;
use vworkspace_protocol::enrollment::{
    EnrollError, EnrollErrorCode, EnrollRequest, EnrollResponse,
};
use vworkspace_protocol::{JoinToken, ca_sha256_hex};

use crate::hub::creds::{self, CredsError};

/// Longest enrollment response accepted.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Deadline of one enrollment request (connect, TLS, HTTP).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("cannot reach the enrollment endpoint {url}: {cause}")]
    Connect {
        /// Endpoint.
        url: String,
        /// Cause.
        #[source]
        cause: ConnectCause,
    },
    /// The hub refused the request.
    #[error("the hub refused enrollment ({code}): {message}")]
    Refused {
        /// Stable code.
        code: EnrollErrorCode,
        /// Hub's message.
        message: String,
        /// The hub's `Retry-After` (whole seconds), sent with `rate_limited`.
        retry_after: Option<Duration>,
    },
    /// The hub's answer is unusable.
    #[error("the hub's enrollment answer is unusable: {0}")]
    BadResponse(#[from] BadResponse),
    /// Key or CSR generation failed (rcgen's errors name no key material).
    #[error("generating the key or CSR failed: {0}")]
    Key(#[from] rcgen::Error),
    /// The request body could not be encoded. serde_json's encoding errors
    /// carry no field values, so the token in that body never shows here.
    #[error("encoding the enrollment request failed: {0}")]
    Encode(#[source] serde_json::Error),
    /// Writing the credentials failed.
    #[error(transparent)]
    Creds(#[from] CredsError),
}

/// Why the enrollment endpoint could not be reached. None of these causes
/// holds the request, so the join token in its body never reaches a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectCause {
    /// The token's `hub_url` is no URL with a host.
    #[error("hub_url is not a valid URL")]
    BadUrl,
    /// The host is no valid TLS server name.
    #[error("invalid host name")]
    BadHostName,
    /// The TLS client could not be configured.
    #[error("{0}")]
    TlsConfig(#[from] rustls::Error),
    /// The TCP connection failed.
    #[error("{0}")]
    Tcp(#[source] std::io::Error),
    /// The TLS handshake failed (for a reason other than the pin).
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The HTTP request could not be built.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// No answer within the enrollment deadline.
    #[error("timed out")]
    Timeout,
}

/// Why the hub's enrollment answer is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BadResponse {
    /// The body broke off or exceeded the size limit.
    #[error("body unreadable or too large")]
    Body,
    /// The body is no enrollment answer.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The bundle lacks the CA the token pins.
    #[error("the CA bundle does not contain the pinned CA")]
    UnpinnedCa,
    /// No certificate in the answer.
    #[error("no certificate")]
    NoCertificate,
    /// The certificate is for another key than the one sent in the CSR.
    #[error("the certificate is not for the key this agent generated")]
    ForeignKey,
    /// The answer names no cluster or organisation.
    #[error("empty cluster id or org")]
    EmptyIdentity,
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

    /// How long the hub asked to wait before the next attempt, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EnrollFailure::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the hub is pacing requests (`429 rate_limited`): a normal
    /// part of a fleet-wide re-enrollment, not a failure.
    pub fn is_paced(&self) -> bool {
        matches!(
            self,
            EnrollFailure::Refused {
                code: EnrollErrorCode::RateLimited,
                ..
            }
        )
    }

    /// Metric label and Cluster condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            _ if self.is_paced() => reasons::RATE_LIMITED,
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
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
        csr_pem: csr.pem()?,
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

/// The delay a `Retry-After` header asks for. Only the delay-seconds form
/// (what the protocol specifies) is read; an HTTP date or garbage is `None`,
/// and the caller falls back to its own backoff.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A non-2xx answer as a typed refusal: the hub's code, its message escaped
/// (it reaches logs and conditions) and its `Retry-After`.
pub(crate) fn refusal(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> EnrollFailure {
    let err = serde_json::from_slice::<EnrollError>(body).unwrap_or(EnrollError {
        code: EnrollErrorCode::Unknown,
        message: format!("HTTP {status}"),
    });
    EnrollFailure::Refused {
        code: err.code,
        message: vworkspace_protocol::untrusted::escape(&err.message, 300),
        retry_after: retry_after(headers),
    }
}

/// Sends the enrollment request to the hub named in the token.
pub async fn request_enrollment(
    token: &JoinToken,
    csr_pem: &str,
) -> Result<EnrollResponse, EnrollFailure> {
    let claims = token.claims();
    let url = claims.enroll_url();
    let connect_err = |cause: ConnectCause| EnrollFailure::Connect {
        url: url.clone(),
        cause,
    };
    let (host, port) =
        host_port(&claims.hub_url, 443).ok_or_else(|| connect_err(ConnectCause::BadUrl))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        pin: claims.ca_sha256.clone(),
        provider: provider.clone(),
        mismatch: Default::default(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| connect_err(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name =
        ServerName::try_from(host.clone()).map_err(|_| connect_err(ConnectCause::BadHostName))?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.expose_secret().to_owned(),
        csr_pem: csr_pem.to_owned(),
    })
    .map_err(EnrollFailure::Encode)?;
    let path = vworkspace_protocol::enrollment::ENROLL_PATH;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| connect_err(ConnectCause::Tcp(e)))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| {
                if verifier.mismatch.load(std::sync::atomic::Ordering::Relaxed) {
                    EnrollFailure::PinMismatch(claims.hub_url.clone())
                } else {
                    connect_err(ConnectCause::Tls(e))
                }
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(e.into()))?;
        let conn = tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, format!("{host}:{port}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(e.into()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(e.into()))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| BadResponse::Body)?
            .to_bytes();
        conn.abort();
        if status.is_success() {
            serde_json::from_slice::<EnrollResponse>(&bytes)
                .map_err(|e| BadResponse::Json(e).into())
        } else {
            Err(refusal(status, &headers, &bytes))
        }
    };
    tokio::time::timeout(ENROLL_TIMEOUT, exchange)
        .await
        .map_err(|_| connect_err(ConnectCause::Timeout))?
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
        return Err(BadResponse::UnpinnedCa.into());
    }
    let leaf = CertificateDer::pem_slice_iter(resp.certificate_pem.as_bytes())
        .find_map(Result::ok)
        .ok_or(BadResponse::NoCertificate)?;
    if creds::cert_spki(leaf.as_ref()).as_deref() != Some(spki_der) {
        return Err(BadResponse::ForeignKey.into());
    }
    if resp.cluster_id.is_empty() || resp.org.is_empty() {
        return Err(BadResponse::EmptyIdentity.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_429_carries_its_retry_after_and_an_escaped_message() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(37u64));
        let body = br#"{"code":"rate_limited","message":"slow down\u001b[31m"}"#;
        let err = refusal(http::StatusCode::TOO_MANY_REQUESTS, &headers, body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(37)));
        assert!(err.is_paced() && err.is_retryable());
        assert_eq!(err.reason(), reasons::RATE_LIMITED);
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
        // The wait the agent takes is at least what the hub asked.
        let wait = crate::hub::backoff::after_failure(
            err.retry_after(),
            Duration::from_secs(2),
            Duration::from_secs(300),
            1,
        );
        assert!(wait >= Duration::from_secs(37), "{wait:?}");
        // An HTTP-date or a refusal without the header: no value.
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        let other = refusal(
            http::StatusCode::CONFLICT,
            &http::HeaderMap::new(),
            br#"{"code":"token_reused","message":"used"}"#,
        );
        assert_eq!(other.retry_after(), None);
        assert!(!other.is_paced() && !other.is_retryable());
        assert_eq!(other.reason(), reasons::REGISTRATION_FAILED);
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

    /// An unreachable hub gives a typed cause, and neither the message nor
    /// any cause in its chain holds the join token.
    #[tokio::test]
    async fn an_unreachable_hub_is_a_typed_connect_failure_without_the_token() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (issuer, _) = vworkspace_protocol::JoinTokenIssuer::generate().unwrap();
        let now = vworkspace_protocol::unix_now();
        let token = issuer
            .issue(&vworkspace_protocol::JoinClaims {
                iss: "hub".into(),
                aud: vworkspace_protocol::JOIN_TOKEN_AUDIENCE.into(),
                hub_url: format!("https://127.0.0.1:{port}"),
                ca_sha256: "0".repeat(64),
                cluster: "edge-1".into(),
                org: "acme".into(),
                jti: "jti-1".into(),
                iat: now,
                exp: now + 600,
            })
            .unwrap();
        let err = request_enrollment(&token, "csr").await.unwrap_err();
        assert!(
            matches!(
                &err,
                EnrollFailure::Connect {
                    cause: ConnectCause::Tcp(_),
                    ..
                }
            ),
            "{err:?}"
        );
        let mut chain = format!("{err} {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            chain.push_str(&format!(" {e} {e:?}"));
            source = e.source();
        }
        assert!(!chain.contains(token.expose_secret()), "{chain}");
        assert!(err.is_retryable());
    }
}
