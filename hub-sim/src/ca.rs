//! The hub CA: generated on first start and persisted in the store, it
//! issues the hub's TLS server certificate and the agents' client
//! certificates.
//!
//! Client certificate identity (what the tunnel trusts, and nothing else):
//! subject `O=<org>`, `CN=<cluster id>`, and one URI SAN
//! `spiffe://vworkspace/org/<org>/cluster/<cluster id>`. The hub ignores
//! whatever subject or SANs the CSR asks for and uses only its public key.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::store::{Store, StoreError};

/// Errors from CA operations. Messages never include key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing the CA material failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// rcgen could not build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CSR could not be parsed or its self-signature is wrong.
    #[error("the CSR is not valid PEM or DER, or its signature does not verify")]
    InvalidCsr,
    /// The CSR's key is neither ECDSA P-256 nor Ed25519.
    #[error("the CSR key algorithm is not accepted (use ECDSA P-256 or Ed25519)")]
    UnsupportedKey,
    /// A certificate (or the stored CA) does not carry a readable vWorkspace identity; the text says what is wrong.
    #[error("certificate has no usable vWorkspace identity: {0}")]
    NoIdentity(&'static str),
}

/// Who a client certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Organisation (the subject O).
    pub org: String,
    /// Cluster name (the subject CN).
    pub cluster: String,
    /// Lowercase hex of the certificate serial number.
    pub serial: String,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

/// A freshly signed client certificate.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// The same certificate, DER.
    pub der: CertificateDer<'static>,
    /// Lowercase hex of the serial number.
    pub serial: String,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

/// The SPIFFE-style URI SAN naming a cluster.
pub fn identity_uri(org: &str, cluster: &str) -> String {
    format!("spiffe://vworkspace/org/{org}/cluster/{cluster}")
}

/// The hub certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("sha256", &self.sha256_hex())
            .finish_non_exhaustive()
    }
}

const META_CERT: &str = "ca.cert_pem";
const META_KEY: &str = "ca.key_pem";
const META_NEXT_CERT: &str = "ca.next.cert_pem";
const META_NEXT_KEY: &str = "ca.next.key_pem";
const META_STAGE: &str = "ca.rotation";
const META_SWITCHED_AT: &str = "ca.switched_at";
/// `Store::last_cert_mark` when `switch` ran: certificates recorded up to it
/// come from the old CA.
const META_SWITCH_MARK: &str = "ca.switch_mark";
/// PEM of CAs removed by `retire` (certificates only, keys are dropped).
const META_RETIRED: &str = "ca.retired.cert_pem";
/// Retired CAs kept for recovery checks; the oldest go first.
const MAX_RETIRED: usize = 4;

/// The subject and CA extensions of a hub CA. Each CA gets its own common
/// name: two CAs with one subject would make chain building ambiguous.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "vWorkspace hub-sim");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
    params
}

/// A new self-signed CA: (certificate PEM, key PEM).
fn generate_ca(common_name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(common_name);
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Ca {
    /// Loads the CA from the store, creating and persisting one on first start.
    pub fn load_or_create(store: &Store) -> Result<Self, CaError> {
        if let (Some(cert), Some(key)) = (store.meta_get(META_CERT)?, store.meta_get(META_KEY)?) {
            return Self::from_pem(&cert, &key);
        }
        let (cert_pem, key_pem) = generate_ca("hub-sim CA")?;
        store.meta_set(META_CERT, &cert_pem)?;
        store.meta_set(META_KEY, &key_pem)?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// The common name of this CA's subject.
    fn common_name(&self) -> String {
        use x509_parser::prelude::*;
        X509Certificate::from_der(self.cert_der.as_ref())
            .ok()
            .and_then(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|a| a.as_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "hub-sim CA".to_owned())
    }

    /// `other`'s subject and key, certified by this CA: lets a client that
    /// trusts only this CA build a path to certificates `other` issues.
    fn cross_sign(&self, other: &Ca) -> Result<CertificateDer<'static>, CaError> {
        let key = KeyPair::from_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(other.key_der.clone()).into(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?;
        let mut params = ca_params(&other.common_name());
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&key, &self.issuer)?.der().clone())
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let key_der = key.serialize_der();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = pem_to_der(cert_pem).ok_or(CaError::NoIdentity("CA PEM unreadable"))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
            key_der,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER, lowercase hex: the pin a join token carries.
    pub fn sha256_hex(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.cert_der))
    }

    /// A fresh server certificate for the TLS listener (not persisted; agents pin the CA).
    pub fn server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "hub-sim");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + Duration::from_secs(365 * 24 * 3600);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs an agent CSR (PEM or DER) into a client certificate for `org`/`cluster`.
    pub fn sign_client_csr(
        &self,
        csr: &[u8],
        org: &str,
        cluster: &str,
        lifetime: Duration,
    ) -> Result<IssuedCert, CaError> {
        let mut req = parse_csr(csr)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, org);
        dn.push(DnType::CommonName, cluster);
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + lifetime;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            identity_uri(org, cluster)
                .try_into()
                .map_err(|_| CaError::NoIdentity("org or cluster not valid in a URI"))?,
        )];
        params.not_before = now - Duration::from_secs(300);
        params.not_after = not_after;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        req.params = params;
        let cert = req.signed_by(&self.issuer)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der: cert.der().clone(),
            serial: hex::encode(serial.to_bytes()),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// The CA private key as PKCS#8 DER, for tools that mint certificates
    /// directly from the state dir (the load generator). Never log this.
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_der
    }
}

/// Where a hub CA rotation stands (docs/operations.md, "Rotating the hub CA").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaStage {
    /// One CA: it is in the bundle, signs everything and verifies clients.
    Single,
    /// A new CA is in the bundle and verifies clients; the old one still signs.
    Added,
    /// The new CA signs the server certificate and new client certificates;
    /// the old one stays in the bundle and still verifies clients.
    Switched,
}

impl CaStage {
    /// The stage as the store, the audit log and the admin API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Added => "added",
            Self::Switched => "switched",
        }
    }
}

/// Why a rotation step was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// Issuing with, or loading, a CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Reading or writing the rotation state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The step does not follow from the current stage.
    #[error("rotate-ca {step} needs stage {needs}, the rotation is at {at}")]
    WrongStage {
        /// The step asked for (`add`, `switch` or `retire`).
        step: &'static str,
        /// The stage that step needs.
        needs: &'static str,
        /// The stage the rotation is at.
        at: &'static str,
    },
}

/// The hub's CAs during (or outside) a rotation: which one issues, which
/// ones the bundle carries and client verification accepts.
#[derive(Debug)]
pub struct CaRing {
    old: std::sync::Arc<Ca>,
    next: Option<std::sync::Arc<Ca>>,
    stage: CaStage,
    switched_at: Option<i64>,
    switch_mark: Option<i64>,
    /// CAs removed by `retire`, newest last: they verify no handshake, only
    /// the certificate a recovery request presents (docs/protocol.md §4.2).
    retired: Vec<CertificateDer<'static>>,
}

impl CaRing {
    /// Loads the CA(s) and the rotation stage, creating the first CA on first start.
    pub fn load_or_create(store: &Store) -> Result<Self, CaError> {
        let old = std::sync::Arc::new(Ca::load_or_create(store)?);
        let next = match (
            store.meta_get(META_NEXT_CERT)?,
            store.meta_get(META_NEXT_KEY)?,
        ) {
            (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                Some(std::sync::Arc::new(Ca::from_pem(&c, &k)?))
            }
            _ => None,
        };
        // A retire interrupted after the new CA became the current one.
        let next = next.filter(|n| n.sha256_hex() != old.sha256_hex());
        let stage = match (&next, store.meta_get(META_STAGE)?.as_deref()) {
            (None, _) => CaStage::Single,
            (Some(_), Some("switched")) => CaStage::Switched,
            (Some(_), _) => CaStage::Added,
        };
        let switched_at = store
            .meta_get(META_SWITCHED_AT)?
            .and_then(|v| v.parse().ok())
            .filter(|_| stage == CaStage::Switched);
        let switch_mark = store
            .meta_get(META_SWITCH_MARK)?
            .and_then(|v| v.parse().ok())
            .filter(|_| stage == CaStage::Switched);
        let retired = retired_cas(store)?;
        Ok(Self {
            old,
            next,
            stage,
            switched_at,
            switch_mark,
            retired,
        })
    }

    /// Where the rotation stands.
    pub fn stage(&self) -> CaStage {
        self.stage
    }

    /// When `switch` ran (seconds since the epoch): client certificates
    /// issued before come from the old CA.
    pub fn switched_at(&self) -> Option<i64> {
        self.switched_at
    }

    /// The certificate mark of `switch` (`Store::last_cert_mark`):
    /// certificates recorded up to it were issued by the old CA.
    pub fn switch_mark(&self) -> Option<i64> {
        self.switch_mark
    }

    /// The CA that signs the server certificate and new client certificates.
    pub fn issuing(&self) -> std::sync::Arc<Ca> {
        match (&self.next, self.stage) {
            (Some(next), CaStage::Switched) => next.clone(),
            _ => self.old.clone(),
        }
    }

    /// Every CA of the bundle: trusted by agents, accepted for client certificates.
    pub fn all(&self) -> Vec<std::sync::Arc<Ca>> {
        std::iter::once(self.old.clone())
            .chain(self.next.clone())
            .collect()
    }

    /// The CAs a recovery request's certificate may come from: the bundle
    /// plus the retired ones, so a cluster that missed a rotation while its
    /// identity stayed known to the hub can still prove it.
    pub fn recovery_roots(&self) -> Vec<CertificateDer<'static>> {
        self.all()
            .iter()
            .map(|c| c.cert_der().clone())
            .chain(self.retired.iter().cloned())
            .collect()
    }

    /// The bundle agents receive: every CA's PEM, the issuing one first.
    pub fn bundle_pem(&self) -> String {
        let issuing = self.issuing();
        let mut out = issuing.cert_pem().to_owned();
        for ca in self.all() {
            if ca.sha256_hex() != issuing.sha256_hex() {
                out.push_str(ca.cert_pem());
            }
        }
        out
    }

    /// The CA of the bundle whose certificate hashes to `sha256_hex`.
    pub fn by_pin(&self, sha256_hex: &str) -> Option<std::sync::Arc<Ca>> {
        self.all()
            .into_iter()
            .find(|c| c.sha256_hex() == sha256_hex)
    }

    /// The server chain: leaf, issuing CA, and after `switch` also the new
    /// CA cross-signed by the old one plus the old CA, so an agent that
    /// trusts (or pins) only the old CA still reaches the hub until `retire`.
    pub fn server_chain(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let issuing = self.issuing();
        let (mut chain, key) = issuing.server_cert(names)?;
        if self.stage == CaStage::Switched {
            chain.push(self.old.cross_sign(&issuing)?);
            chain.push(self.old.cert_der().clone());
        }
        Ok((chain, key))
    }

    /// `rotate-ca add`: generates the new CA and puts it into the bundle.
    pub fn add(store: &Store) -> Result<Self, RotationError> {
        let ring = Self::load_or_create(store)?;
        if ring.stage != CaStage::Single {
            return Err(RotationError::WrongStage {
                step: "add",
                needs: "single",
                at: ring.stage.as_str(),
            });
        }
        let name = format!(
            "hub-sim CA {}",
            time::OffsetDateTime::now_utc().unix_timestamp()
        );
        let (cert, key) = generate_ca(&name)?;
        store.meta_set(META_NEXT_CERT, &cert)?;
        store.meta_set(META_NEXT_KEY, &key)?;
        store.meta_set(META_STAGE, "added")?;
        Ok(Self::load_or_create(store)?)
    }

    /// `rotate-ca switch`: the new CA issues from now on.
    pub fn switch(store: &Store) -> Result<Self, RotationError> {
        let ring = Self::load_or_create(store)?;
        if ring.stage != CaStage::Added {
            return Err(RotationError::WrongStage {
                step: "switch",
                needs: "added",
                at: ring.stage.as_str(),
            });
        }
        store.meta_set(META_SWITCHED_AT, &crate::store::now().to_string())?;
        store.meta_set(META_SWITCH_MARK, &store.last_cert_mark()?.to_string())?;
        store.meta_set(META_STAGE, "switched")?;
        Ok(Self::load_or_create(store)?)
    }

    /// `rotate-ca retire`: the old CA leaves bundle and client verification.
    pub fn retire(store: &Store) -> Result<Self, RotationError> {
        let ring = Self::load_or_create(store)?;
        let next = match (&ring.next, ring.stage) {
            (Some(next), CaStage::Switched) => next.clone(),
            _ => {
                return Err(RotationError::WrongStage {
                    step: "retire",
                    needs: "switched",
                    at: ring.stage.as_str(),
                });
            }
        };
        // The new CA becomes the current one first: a crash after this line
        // loads a single CA (see `load_or_create`).
        let key_pem = KeyPair::from_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(next.key_der.clone()).into(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )
        .map_err(CaError::from)?
        .serialize_pem();
        const END: &str = "-----END CERTIFICATE-----";
        let stored = store.meta_get(META_RETIRED)?.unwrap_or_default();
        let mut retired: Vec<String> = stored
            .split_inclusive(END)
            .filter(|p| p.contains(END))
            .map(|p| format!("{}\n", p.trim()))
            .collect();
        retired.push(ring.old.cert_pem().to_owned());
        if retired.len() > MAX_RETIRED {
            retired.drain(..retired.len() - MAX_RETIRED);
        }
        store.meta_set(META_RETIRED, &retired.concat())?;
        store.meta_set(META_CERT, next.cert_pem())?;
        store.meta_set(META_KEY, &key_pem)?;
        store.meta_set(META_STAGE, "single")?;
        store.meta_set(META_NEXT_CERT, "")?;
        store.meta_set(META_NEXT_KEY, "")?;
        Ok(Self::load_or_create(store)?)
    }
}

/// The retired CAs stored by `retire`.
fn retired_cas(store: &Store) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls_pki_types::pem::PemObject;
    Ok(store
        .meta_get(META_RETIRED)?
        .map(|pem| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default())
}

fn parse_csr(csr: &[u8]) -> Result<CertificateSigningRequestParams, CaError> {
    let parsed = if csr.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(csr).map_err(|_| CaError::InvalidCsr)?;
        CertificateSigningRequestParams::from_pem(text)
    } else {
        CertificateSigningRequestParams::from_der(&csr.to_vec().into())
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(rcgen::Error::UnsupportedSignatureAlgorithm) => return Err(CaError::UnsupportedKey),
        Err(_) => return Err(CaError::InvalidCsr),
    };
    // docs/protocol.md §4 allows exactly these client keys; anything else
    // (RSA of any size, other curves) is refused rather than certified.
    let alg = parsed.public_key.algorithm();
    if *alg != rcgen::PKCS_ECDSA_P256_SHA256 && *alg != rcgen::PKCS_ED25519 {
        return Err(CaError::UnsupportedKey);
    }
    Ok(parsed)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Reads the identity out of a client certificate the TLS layer already verified.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, CaError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| CaError::NoIdentity("certificate unreadable"))?;
    let org = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(CaError::NoIdentity("subject has no O"))?
        .to_owned();
    let cluster = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(CaError::NoIdentity("subject has no CN"))?
        .to_owned();
    // Only the key types the protocol allows, also for certificates issued
    // before the CSR check existed.
    let alg = &cert.public_key().algorithm;
    let key_ok = if alg.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        alg.parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == x509_parser::oid_registry::OID_EC_P256)
    } else {
        alg.algorithm == x509_parser::oid_registry::OID_SIG_ED25519
    };
    if !key_ok {
        return Err(CaError::NoIdentity(
            "client key is not ECDSA P-256 or Ed25519",
        ));
    }
    let want = identity_uri(&org, &cluster);
    let san_ok = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if *u == want))
        })
        .unwrap_or(false);
    if !san_ok {
        return Err(CaError::NoIdentity("URI SAN does not match subject"));
    }
    Ok(Identity {
        org,
        cluster,
        serial: serial_hex(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Serial bytes as rcgen wrote them, lowercase hex without leading zero bytes.
fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => raw,
    };
    hex::encode(trimmed)
}

/// The serial of a DER certificate, in the same form as [`Identity::serial`].
pub fn cert_serial_hex(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(serial_hex(cert.raw_serial()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_signs_csr_with_hub_chosen_identity() {
        let store = Store::in_memory().unwrap();
        let ca = Ca::load_or_create(&store).unwrap();
        let again = Ca::load_or_create(&store).unwrap();
        assert_eq!(ca.sha256_hex(), again.sha256_hex());

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&key).unwrap();
        let issued = ca
            .sign_client_csr(
                csr.pem().unwrap().as_bytes(),
                "acme",
                "edge-1",
                Duration::from_secs(3600),
            )
            .unwrap();
        let id = identity_from_cert(&issued.der).unwrap();
        assert_eq!(id.org, "acme");
        assert_eq!(id.cluster, "edge-1");
        assert_eq!(id.serial, issued.serial);
        assert_eq!(cert_serial_hex(&issued.der).unwrap(), issued.serial);

        assert!(matches!(
            ca.sign_client_csr(b"not a csr", "acme", "edge-1", Duration::from_secs(60)),
            Err(CaError::InvalidCsr)
        ));
    }

    /// Whether a client trusting exactly `roots` accepts `chain` for `name`.
    fn server_chain_verifies(
        roots: &[CertificateDer<'static>],
        chain: &[CertificateDer<'static>],
    ) -> bool {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(store),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls_pki_types::ServerName::try_from("hub.example").unwrap();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            &chain[0],
            &chain[1..],
            &name,
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .is_ok()
    }

    #[test]
    fn a_rotation_runs_add_switch_retire_in_order_and_refuses_steps_out_of_order() {
        let store = Store::in_memory().unwrap();
        let first = CaRing::load_or_create(&store).unwrap();
        let old = first.issuing();
        assert_eq!(first.stage(), CaStage::Single);
        assert!(matches!(
            CaRing::switch(&store),
            Err(RotationError::WrongStage { step: "switch", .. })
        ));
        assert!(matches!(
            CaRing::retire(&store),
            Err(RotationError::WrongStage { step: "retire", .. })
        ));

        let added = CaRing::add(&store).unwrap();
        assert_eq!(added.stage(), CaStage::Added);
        assert_eq!(added.issuing().sha256_hex(), old.sha256_hex());
        assert_eq!(added.all().len(), 2);
        let new = added.all()[1].clone();
        assert_ne!(new.sha256_hex(), old.sha256_hex());
        assert!(added.by_pin(&new.sha256_hex()).is_some());
        assert!(added.bundle_pem().starts_with(old.cert_pem()));
        assert!(matches!(
            CaRing::add(&store),
            Err(RotationError::WrongStage { step: "add", .. })
        ));

        let switched = CaRing::switch(&store).unwrap();
        assert_eq!(switched.stage(), CaStage::Switched);
        assert_eq!(switched.issuing().sha256_hex(), new.sha256_hex());
        assert!(switched.bundle_pem().starts_with(new.cert_pem()));
        assert!(switched.switched_at().is_some());
        // The stage survives a restart.
        assert_eq!(
            CaRing::load_or_create(&store).unwrap().stage(),
            CaStage::Switched
        );

        let retired = CaRing::retire(&store).unwrap();
        assert_eq!(retired.stage(), CaStage::Single);
        assert_eq!(retired.all().len(), 1);
        assert_eq!(retired.issuing().sha256_hex(), new.sha256_hex());
        assert_eq!(retired.bundle_pem(), new.cert_pem());
        assert!(retired.by_pin(&old.sha256_hex()).is_none());
        // The old CA's certificate stays for recovery checks only.
        let roots = retired.recovery_roots();
        assert!(roots.contains(old.cert_der()));
        assert!(roots.contains(new.cert_der()));
        let reloaded = CaRing::load_or_create(&store).unwrap();
        assert_eq!(reloaded.issuing().sha256_hex(), new.sha256_hex());
        assert!(reloaded.recovery_roots().contains(old.cert_der()));
    }

    #[test]
    fn after_switch_the_server_chain_verifies_for_old_only_new_only_and_both() {
        let store = Store::in_memory().unwrap();
        let old = CaRing::load_or_create(&store).unwrap().issuing();
        let added = CaRing::add(&store).unwrap();
        let new = added.all()[1].clone();
        let names = vec!["hub.example".to_owned()];

        let (chain, _) = added.server_chain(&names).unwrap();
        assert!(server_chain_verifies(&[old.cert_der().clone()], &chain));

        let switched = CaRing::switch(&store).unwrap();
        let (chain, _) = switched.server_chain(&names).unwrap();
        assert!(server_chain_verifies(&[old.cert_der().clone()], &chain));
        assert!(server_chain_verifies(&[new.cert_der().clone()], &chain));
        assert!(server_chain_verifies(
            &[old.cert_der().clone(), new.cert_der().clone()],
            &chain
        ));

        // After retire an agent that trusts only the old CA cannot verify the hub.
        let retired = CaRing::retire(&store).unwrap();
        let (chain, _) = retired.server_chain(&names).unwrap();
        assert!(!server_chain_verifies(&[old.cert_der().clone()], &chain));
        assert!(server_chain_verifies(&[new.cert_der().clone()], &chain));
    }
}
