//! `POST /v1/recover`: a cluster whose client certificate expired while it
//! was offline proves possession of that certificate's key and gets a new
//! one, without a join token.
//!
//! Checks, in order: the enrollment rate limits, body shape, that this hub's
//! CA signed the certificate (its validity period is ignored, everything else
//! is checked as in the TLS handshake), its identity, that the cluster exists,
//! belongs to that org and is not revoked, that the certificate is the newest
//! the hub issued to the cluster and was not revoked, that its expiry is
//! within the recovery window, the proof of possession, and the CSR. Every
//! outcome is audited with the serial, never key material.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, UnixTime};
use vworkspace_protocol::enrollment::{EnrollErrorCode, EnrollResponse};
use vworkspace_protocol::recovery::{self, ProofKey, RecoverRequest, RecoverResponse};

use crate::enroll::{fail, rate_limited};
use crate::hub::Hub;
use crate::ratelimit::Decision;
use crate::respond::json_response;

/// Largest recovery request body.
const MAX_BODY: usize = 64 * 1024;

/// `hub-sim serve` flags for recovery and clock simulation.
#[derive(clap::Args, Clone, Debug)]
pub struct RecoveryArgs {
    /// How long after a client certificate's expiry the cluster may still
    /// recover it with its key (`POST /v1/recover`); `0s` turns recovery off.
    #[arg(long, env = "HUB_SIM_RECOVERY_WINDOW", default_value = "30d")]
    pub recovery_window: crate::cli::HumanDuration,
    /// Shift the `server_time` the hub reports in `Welcome` by this many
    /// seconds (negative: behind), to show agents a skewed clock.
    #[arg(
        long,
        env = "HUB_SIM_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub clock_offset_secs: i64,
}

impl RecoveryArgs {
    /// Copies the flags into the hub config.
    pub fn apply(self, cfg: &mut crate::hub::Config) {
        cfg.recovery_window = self.recovery_window.0;
        cfg.clock_offset_secs = self.clock_offset_secs;
    }
}

/// The window `Welcome` announces; `None` when recovery is off.
pub(crate) fn announced_window(window: Duration) -> Option<u64> {
    (!window.is_zero()).then_some(window.as_secs())
}

fn refuse(
    hub: &Hub,
    peer: SocketAddr,
    cluster: Option<&str>,
    code: EnrollErrorCode,
    message: String,
) -> hyper::Response<Full<Bytes>> {
    fail(hub, peer, cluster, code, format!("recovery: {message}"))
}

/// What the certificate says, once this hub's CA is known to have signed it.
struct Presented {
    der: CertificateDer<'static>,
    id: crate::ca::Identity,
    key: ProofKey,
    public_key: Vec<u8>,
}

fn check_certificate(hub: &Hub, pem: &str) -> Result<Presented, String> {
    use x509_parser::prelude::*;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .find_map(Result::ok)
        .ok_or("certificate_pem holds no certificate")?;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|_| "certificate unreadable")?;
    // Chain and signature as in the TLS handshake, at a moment inside the
    // certificate's own validity: only the expiry is forgiven.
    let inside = cert.validity().not_before.timestamp().max(0) as u64 + 1;
    let mut roots = rustls::RootCertStore::empty();
    for ca in hub.ca_ring().recovery_roots() {
        roots.add(ca).map_err(|_| "hub CA unusable")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|_| "hub CA unusable")?;
    verifier
        .verify_client_cert(
            &der,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(inside)),
        )
        .map_err(|e| format!("the certificate was not issued by a CA of this hub: {e}"))?;
    let id = crate::ca::identity_from_cert(der.as_ref()).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    let key = if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
        ProofKey::Ed25519
    } else {
        ProofKey::EcdsaP256
    };
    Ok(Presented {
        public_key: spki.subject_public_key.data.to_vec(),
        der: der.into_owned(),
        id,
        key,
    })
}

pub(crate) async fn handle(
    hub: Arc<Hub>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    if let Decision::Limited { scope, retry_after } = hub.enroll_limiter.check(peer.ip()) {
        return rate_limited(&hub, peer, scope, retry_after);
    }
    if hub.cfg.recovery_window.is_zero() {
        return refuse(
            &hub,
            peer,
            None,
            EnrollErrorCode::RecoveryWindowPassed,
            "this hub does not recover certificates (window 0); enroll with a new join token"
                .into(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refuse(
                &hub,
                peer,
                None,
                EnrollErrorCode::BadRequest,
                format!("request body unreadable or larger than {MAX_BODY} bytes"),
            );
        }
    };
    let Ok(request) = serde_json::from_slice::<RecoverRequest>(&body) else {
        return refuse(
            &hub,
            peer,
            None,
            EnrollErrorCode::BadRequest,
            "body must be JSON {\"certificate_pem\", \"csr_pem\", \"proof_hex\"}".into(),
        );
    };
    let presented = match check_certificate(&hub, &request.certificate_pem) {
        Ok(p) => p,
        Err(m) => return refuse(&hub, peer, None, EnrollErrorCode::RecoveryRefused, m),
    };
    let id = &presented.id;
    let cluster = id.cluster.as_str();
    let serial = id.serial.as_str();
    let internal = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "store access failed");
        refuse(
            &hub,
            peer,
            Some(cluster),
            EnrollErrorCode::Internal,
            "hub store unavailable".into(),
        )
    };
    match hub.store.cluster(cluster) {
        Ok(Some(c)) if c.org != id.org => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::RecoveryRefused,
                format!("serial={serial}: the cluster belongs to another org"),
            );
        }
        Ok(Some(c)) if c.revoked_at.is_some() => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::ClusterRevoked,
                format!("serial={serial}: the cluster is revoked"),
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::RecoveryRefused,
                format!("serial={serial}: unknown cluster"),
            );
        }
        Err(e) => return internal(&e),
    }
    match hub.store.newest_cert(cluster) {
        Ok(Some((newest, revoked))) if newest == serial => {
            if revoked {
                return refuse(
                    &hub,
                    peer,
                    Some(cluster),
                    EnrollErrorCode::ClusterRevoked,
                    format!("serial={serial} is revoked"),
                );
            }
        }
        Ok(_) => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::RecoveryRefused,
                format!("serial={serial} is not the newest certificate of this cluster"),
            );
        }
        Err(e) => return internal(&e),
    }
    let now = crate::store::now();
    let window = hub.cfg.recovery_window.as_secs() as i64;
    if now > id.not_after.saturating_add(window) {
        return refuse(
            &hub,
            peer,
            Some(cluster),
            EnrollErrorCode::RecoveryWindowPassed,
            format!(
                "serial={serial} expired at {}, more than the recovery window of {window}s ago; enroll with a new join token",
                id.not_after
            ),
        );
    }
    let csr_der = match CertificateSigningRequestDer::from_pem_slice(request.csr_pem.as_bytes()) {
        Ok(d) => d,
        Err(_) => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::CsrInvalid,
                "csr_pem holds no CSR".into(),
            );
        }
    };
    let proof = hex::decode(&request.proof_hex).unwrap_or_default();
    let input = recovery::signing_input(presented.der.as_ref(), csr_der.as_ref());
    if recovery::verify_proof(presented.key, &presented.public_key, &input, &proof).is_err() {
        return refuse(
            &hub,
            peer,
            Some(cluster),
            EnrollErrorCode::RecoveryRefused,
            format!("serial={serial}: the proof of possession does not verify"),
        );
    }
    let cert = match hub.ca().sign_client_csr(
        request.csr_pem.as_bytes(),
        &id.org,
        cluster,
        hub.cfg.client_cert_lifetime,
    ) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::CsrInvalid,
                e.to_string(),
            );
        }
    };
    if let Err(e) = hub.store.insert_cert(&cert.serial, cluster, cert.not_after) {
        return internal(&e);
    }
    let _ = hub.store.audit(
        "recover",
        Some(cluster),
        "ok",
        &format!(
            "peer={peer} old_serial={serial} expired_at={} serial={} not_after={}",
            id.not_after, cert.serial, cert.not_after
        ),
    );
    hub.metrics.enrollment("recovered");
    tracing::info!(%peer, cluster, org = %id.org, old_serial = %serial, expired_for_secs = now - id.not_after, serial = %cert.serial, "certificate recovered");
    let resp = RecoverResponse {
        enrolled: EnrollResponse {
            cluster_id: cluster.to_owned(),
            org: id.org.clone(),
            certificate_pem: cert.pem,
            ca_bundle_pem: hub.ca_ring().bundle_pem(),
            signing_keys: hub.signing_keys(),
            tunnel_url: crate::wire::tunnel_url(hub.public_url()),
        },
        recovery_window_secs: hub.cfg.recovery_window.as_secs(),
    };
    json_response(
        http::StatusCode::OK,
        &serde_json::to_value(resp).unwrap_or_default(),
    )
}
