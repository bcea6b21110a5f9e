//! Certificate renewal over the tunnel: `RenewCert` at about two thirds of
//! the certificate's lifetime, and the `CertIssued` answer checked and stored
//! in the credentials Secret.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;
use vworkspace_protocol::{CertIssued, Frame, RenewCert};

use super::conn::Conn;
use super::{Tunnel, TunnelError};
use crate::hub::creds::{self, Credentials};
use crate::hub::enroll::{self, KeyAndCsr};
use crate::hub::metrics::Metrics;
use crate::process::logging::Redactor;

/// Retry a renewal that got no answer after this long.
const RENEWAL_RETRY: Duration = Duration::from_secs(300);

/// Why a `CertIssued` frame was ignored.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("no renewal was requested")]
    NotRequested,
    #[error("no certificate in CertIssued")]
    NoCertificate,
    #[error("the certificate is not for the renewal key")]
    WrongKey,
    #[error("empty CA bundle")]
    EmptyCaBundle,
}

/// Certificate renewal over the tunnel at about two thirds of the lifetime.
pub(super) struct Renewal {
    pub(super) at: Option<Instant>,
    pending: Option<KeyAndCsr>,
}

impl Renewal {
    /// Schedules renewal at two thirds of the certificate's lifetime, or at
    /// once when the certificate comes from a CA the hub no longer issues from.
    pub(super) fn new(creds: &Credentials) -> Self {
        let mut r = Self::scheduled(creds, false);
        if issued_by_old_ca(creds) {
            tracing::info!(
                "The client certificate comes from a CA the hub no longer issues from; renewing now"
            );
            r.at = Some(Instant::now());
        }
        r
    }

    /// After a renewal, also wait at least half of what is left, so a hub
    /// that backdates `notBefore` (clock skew) cannot cause a renewal storm.
    fn after_renewal(creds: &Credentials) -> Self {
        Self::scheduled(creds, true)
    }

    fn scheduled(creds: &Credentials, just_renewed: bool) -> Self {
        let now = vworkspace_protocol::unix_now();
        let at = creds.validity().map(|(nb, na)| {
            let renew_unix = renewal_time(nb, na, creds.received_at, now, just_renewed);
            let wait = (renew_unix - now).max(0) as u64;
            Instant::now() + Duration::from_secs(wait)
        });
        Self { at, pending: None }
    }

    pub(super) async fn start(
        &mut self,
        conn: &mut Conn,
        metrics: &Metrics,
        redactor: &Redactor,
        creds: &Credentials,
    ) -> Result<(), TunnelError> {
        self.at = Some(Instant::now() + RENEWAL_RETRY);
        let kc = match enroll::generate_key_and_csr(&creds.cluster_id) {
            Ok(kc) => kc,
            Err(error) => {
                metrics.renewal("key_failed");
                tracing::warn!(%error, "Renewal key generation failed");
                return Ok(());
            }
        };
        redactor.register(&kc.key_pem);
        let csr_pem = kc.csr_pem.clone();
        self.pending = Some(kc);
        tracing::info!("Requesting a renewed client certificate");
        conn.send(Frame::RenewCert(RenewCert { csr_pem })).await?;
        Ok(())
    }

    fn finish(&mut self, creds: &Credentials, issued: CertIssued) -> Result<Credentials, Refused> {
        let kc = self.pending.take().ok_or(Refused::NotRequested)?;
        let leaf =
            rustls_pki_types::CertificateDer::pem_slice_iter(issued.certificate_pem.as_bytes())
                .find_map(Result::ok)
                .ok_or(Refused::NoCertificate)?;
        if creds::cert_spki(leaf.as_ref()).as_deref() != Some(kc.spki_der.as_slice()) {
            return Err(Refused::WrongKey);
        }
        if rustls_pki_types::CertificateDer::pem_slice_iter(issued.ca_bundle_pem.as_bytes())
            .filter_map(Result::ok)
            .next()
            .is_none()
        {
            return Err(Refused::EmptyCaBundle);
        }
        Ok(Credentials {
            key_pem: kc.key_pem,
            cert_pem: issued.certificate_pem,
            ca_pem: issued.ca_bundle_pem,
            received_at: Some(vworkspace_protocol::unix_now()),
            ..creds.clone()
        })
    }
}

/// Whether the client certificate was issued by another CA than the first
/// of the bundle, the one the hub issues from (docs/protocol.md §5.1): after
/// a hub CA switch the agent renews at once, so the old CA can be retired
/// without cutting it off. Compares the leaf's issuer name with the CA's
/// subject name (each hub CA has its own).
pub(super) fn issued_by_old_ca(creds: &Credentials) -> bool {
    let (Some(leaf), Some(first)) = (
        creds.certs().into_iter().next(),
        creds.ca_certs().into_iter().next(),
    ) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(leaf.as_ref()),
        x509_parser::parse_x509_certificate(first.as_ref()),
    ) else {
        return false;
    };
    leaf.issuer().as_raw() != ca.subject().as_raw()
}

/// When to send `renew_cert`, Unix seconds (docs/protocol.md §7): two thirds
/// of the way from `start` to `notAfter`, where `start` is the later of
/// `notBefore` and the moment the agent received the certificate. A hub that
/// backdates `notBefore` for clock skew therefore does not move renewal
/// earlier. Right after a renewal the agent also waits at least half of what
/// is left, so a misbehaving hub cannot cause a renewal storm.
pub(super) fn renewal_time(
    not_before: i64,
    not_after: i64,
    received_at: Option<i64>,
    now: i64,
    just_renewed: bool,
) -> i64 {
    let start = received_at
        .filter(|r| *r < not_after)
        .map_or(not_before, |r| r.max(not_before));
    let mut at = start + (not_after - start) * 2 / 3;
    if just_renewed {
        at = at.max(now + (not_after - now) / 2);
    }
    at
}

// === impl Tunnel ===

impl Tunnel {
    /// Checks and stores a renewed certificate; a refused one is logged and ignored.
    pub(super) async fn renewed(
        &self,
        creds: &Credentials,
        renewal: &mut Renewal,
        issued: CertIssued,
    ) {
        match renewal.finish(creds, issued) {
            Ok(new) => {
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
                match new.store(&secrets, &self.credentials_secret, owner).await {
                    Ok(()) => {
                        self.metrics.renewal("ok");
                        let na = new.not_after();
                        if let Some(na) = na {
                            self.metrics.cert_expiry.set(na);
                        }
                        *renewal = Renewal::after_renewal(&new);
                        tracing::info!(not_after = ?na, "Client certificate renewed");
                        let _ = self
                            .cluster_status
                            .update(|s| {
                                s.certificate_not_after = na.and_then(enroll::time_from_unix)
                            })
                            .await;
                    }
                    Err(error) => {
                        self.metrics.renewal("store_failed");
                        tracing::warn!(%error, "Storing the renewed certificate failed");
                    }
                }
            }
            Err(why) => {
                self.metrics.renewal("refused");
                tracing::warn!(%why, "Ignoring a CertIssued frame");
            }
        }
    }
}
