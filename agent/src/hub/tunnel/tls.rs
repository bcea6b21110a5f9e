//! TLS and WebSocket settings of the tunnel, built from the credentials on
//! every connect (so a renewed certificate is used without a restart), and
//! the sorting of connect failures into "refused" and "try again".

use std::sync::Arc;

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use vworkspace_protocol::Limits;

use super::TunnelError;
use crate::hub::creds::Credentials;

/// Why the TLS configuration could not be built from the credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A certificate of the CA bundle was refused.
    #[error("CA bundle: {0}")]
    CaBundle(#[source] rustls::Error),
    /// The private key does not parse.
    #[error("the private key does not parse")]
    Key,
    /// rustls refused the configuration (protocol versions, key and certificate).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Mutual TLS 1.3 trusting only the hub CA of the credentials.
pub(super) fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in creds.ca_certs() {
        roots.add(ca).map_err(TlsConfigError::CaBundle)?;
    }
    let key = creds.key().map_err(|_| TlsConfigError::Key)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(creds.certs(), key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// WebSocket limits that match the protocol limits.
pub(super) fn ws_config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        .max_write_buffer_size(4 * limits.max_frame_bytes)
}

/// A failed connect: the hub refusing this identity is `Rejected` (shown on
/// the Cluster status), anything else is worth another attempt.
pub(super) fn classify(e: tungstenite::Error) -> TunnelError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
                TunnelError::Rejected(format!("HTTP {status} on the tunnel upgrade"))
            } else {
                TunnelError::UpgradeStatus(status)
            }
        }
        other if server_ca_unknown(&other) => TunnelError::HubCaUnknown(other.to_string()),
        other => {
            let s = other.to_string();
            // The hub refuses a revoked or foreign certificate with a TLS alert.
            if s.contains("Revoked") || s.contains("BadCertificate") || s.contains("UnknownCA") {
                TunnelError::Rejected(s)
            } else {
                TunnelError::WebSocket(other)
            }
        }
    }
}

/// Whether a connect failed because the hub's server certificate does not
/// chain to any CA of the bundle: the hub CA was rotated while this cluster
/// was away (or the URL points at another server).
pub(crate) fn server_ca_unknown(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                c,
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            );
        }
        // tokio-rustls hands rustls errors over inside an io::Error.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            cur = Some(inner);
            continue;
        }
        if let Some(tungstenite::Error::Io(io)) = err.downcast_ref::<tungstenite::Error>() {
            cur = Some(io);
            continue;
        }
        cur = err.source();
    }
    false
}
