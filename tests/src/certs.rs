//! The certificates envtest generates: a serving CA and cert, a service-account
//! signer, and a client CA that mints users (CN = user, O = group).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use time::{Duration, OffsetDateTime};

/// A certificate and its PKCS#8 key, both PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Pair").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// A self-signed ECDSA P-256 CA.
pub fn ca(cn: &str, org: &str) -> Result<Pair, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 30);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    Ok(Pair {
        cert_pem: issuer.pem(),
        key_pem: issuer.key().serialize_pem(),
    })
}

fn issuer(ca: &Pair) -> Result<Issuer<'static, KeyPair>, rcgen::Error> {
    Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)
}

/// The apiserver serving cert: CN localhost, SANs DNS localhost and IP 127.0.0.1.
pub fn serving(ca: &Pair) -> Result<Pair, rcgen::Error> {
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, 7);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Most organisations (groups) one client cert can carry: rcgen keeps one value
/// per attribute type, and the O OID can be given once by name and once by number.
pub const MAX_GROUPS: usize = 2;

/// A client cert for `user` in `groups`, signed by the client CA.
pub fn client(ca: &Pair, user: &str, groups: &[&str]) -> Result<Pair, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    let mut group_types = [
        DnType::OrganizationName,
        DnType::CustomDnType(vec![2, 5, 4, 10]),
    ]
    .into_iter();
    for group in groups {
        let ty = group_types
            .next()
            .ok_or(rcgen::Error::CouldNotParseCertificate)?;
        params.distinguished_name.push(ty, *group);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, 7);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
