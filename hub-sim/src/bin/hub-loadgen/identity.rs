//! Identities of the simulated clusters: enrolled with a join token like a
//! real agent, or minted with the CA from the hub's state dir.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use vworkspace_protocol::enrollment::{EnrollRequest, EnrollResponse};

pub(crate) struct Identity {
    pub(crate) cluster: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

pub(crate) fn tls_config(
    ca_pem: &str,
    cert_pem: Option<(&str, &str)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match cert_pem {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
    })
}

pub(crate) async fn enroll_one(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    token: &str,
) -> anyhow::Result<(String, String)> {
    let (key, body) = enroll_body(token)?;
    // The hub rate-limits enrollment per address; wait as told, like an agent.
    for _ in 0..600 {
        match enroll_request(None, addr, cfg.clone(), &body).await? {
            Enrolled::Done(bytes) => {
                let resp: EnrollResponse = serde_json::from_slice(&bytes)?;
                return Ok((resp.certificate_pem, key.serialize_pem()));
            }
            Enrolled::RetryAfter(wait) => {
                tokio::time::sleep(wait.max(Duration::from_secs(1))).await
            }
            Enrolled::Refused { status, body } => bail!("enrollment answered {status}: {body}"),
        }
    }
    bail!("enrollment still rate limited after 600 attempts")
}

/// A fresh key and the enrollment request body for it (token and CSR).
pub(crate) fn enroll_body(token: &str) -> anyhow::Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.to_owned(),
        csr_pem: csr.pem()?,
    })?;
    Ok((key, body))
}

pub(crate) enum Enrolled {
    Done(Bytes),
    /// `429` with the hub's `Retry-After` (zero when it gave none).
    RetryAfter(Duration),
    /// Any other answer but success.
    Refused {
        status: http::StatusCode,
        body: String,
    },
}

/// A TCP connection to `addr`, from `source` when given. Every address of
/// 127.0.0.0/8 is local on Linux, so simulated clusters can each have their
/// own loopback address, as real clusters each have their own address.
pub(crate) async fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

pub(crate) async fn enroll_request(
    source: Option<IpAddr>,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    body: &[u8],
) -> anyhow::Result<Enrolled> {
    let body = body.to_vec();
    let tcp = connect_from(source, addr).await?;
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post("/v1/enroll")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        return Ok(Enrolled::RetryAfter(Duration::from_secs(
            retry_after.unwrap_or(0),
        )));
    }
    if !status.is_success() {
        return Ok(Enrolled::Refused {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(Enrolled::Done(bytes))
}
