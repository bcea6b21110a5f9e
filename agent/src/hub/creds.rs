//! The credentials Secret: the agent's key, client certificate, the hub CA
//! bundle, the intent-signing keys and the identity the hub issued.
//!
//! The Secret lives in the agent's namespace, is owned by the Cluster object
//! (so deleting the Cluster removes it) and is re-read on every tunnel
//! connect, so a renewal or re-enrollment takes effect without a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use vworkspace_protocol::{KeyRing, PublicKeyInfo};

use crate::FIELD_MANAGER;

/// Secret keys.
pub mod keys {
    /// PEM private key (PKCS#8).
    pub const TLS_KEY: &str = "tls.key";
    /// PEM client certificate chain.
    pub const TLS_CRT: &str = "tls.crt";
    /// PEM CA bundle to trust for the hub.
    pub const CA_CRT: &str = "ca.crt";
    /// JSON list of intent-signing public keys.
    pub const SIGNING_KEYS: &str = "signing-keys.json";
    /// Cluster id issued by the hub.
    pub const CLUSTER_ID: &str = "cluster-id";
    /// Organisation.
    pub const ORG: &str = "org";
    /// Tunnel URL (`wss://…/v1/tunnel`).
    pub const TUNNEL_URL: &str = "tunnel-url";
    /// Hub base URL (kept with the upstream key name).
    pub const HUB_URL: &str = "control-plane-base-url";
    /// When the agent received the certificate, Unix seconds (decimal). The
    /// renewal time counts from here, not from a possibly backdated `notBefore`.
    pub const RECEIVED_AT: &str = "received-at";
}

/// Annotation on the credentials Secret: fingerprint of the join token it came from.
pub const TOKEN_FINGERPRINT_ANNOTATION: &str = "vworkspace.io/token-fingerprint";

/// Why the credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredsError {
    /// The Secret does not exist yet.
    #[error("credentials Secret {namespace}/{name} does not exist (enrollment has not completed)")]
    Missing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A key is missing or unusable.
    #[error("credentials Secret field {0:?} is missing or invalid")]
    Field(&'static str),
    /// API error.
    #[error("reading or writing the credentials Secret: {0}")]
    Kube(#[from] kube::Error),
}

/// Everything needed to open the tunnel. `Debug` never prints the key.
#[derive(Clone)]
pub struct Credentials {
    /// PEM private key; never log.
    pub key_pem: String,
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM CA bundle.
    pub ca_pem: String,
    /// Intent-signing keys from enrollment.
    pub signing_keys: Vec<PublicKeyInfo>,
    /// Cluster id.
    pub cluster_id: String,
    /// Organisation.
    pub org: String,
    /// Tunnel URL.
    pub tunnel_url: String,
    /// Hub base URL.
    pub hub_url: String,
    /// Fingerprint of the join token these came from.
    pub token_fingerprint: Option<String>,
    /// When the certificate was received, Unix seconds (absent in Secrets
    /// written by older agents).
    pub received_at: Option<i64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster_id", &self.cluster_id)
            .field("org", &self.org)
            .field("tunnel_url", &self.tunnel_url)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the Secret; `Missing` when it does not exist.
    pub async fn load(
        secrets: &Api<Secret>,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Self>, CredsError> {
        let secret = secrets
            .get_opt(name)
            .await?
            .ok_or_else(|| CredsError::Missing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        Self::from_secret(&secret).map(Arc::new)
    }

    /// Parses a Secret and checks that key and certificate are usable.
    pub fn from_secret(secret: &Secret) -> Result<Self, CredsError> {
        let data = secret.data.as_ref().ok_or(CredsError::Field("data"))?;
        let get = |k: &'static str| -> Result<String, CredsError> {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.trim().is_empty())
                .ok_or(CredsError::Field(k))
        };
        let signing_keys: Vec<PublicKeyInfo> = serde_json::from_str(&get(keys::SIGNING_KEYS)?)
            .map_err(|_| CredsError::Field(keys::SIGNING_KEYS))?;
        let c = Self {
            key_pem: get(keys::TLS_KEY)?,
            cert_pem: get(keys::TLS_CRT)?,
            ca_pem: get(keys::CA_CRT)?,
            signing_keys,
            cluster_id: get(keys::CLUSTER_ID)?,
            org: get(keys::ORG)?,
            tunnel_url: get(keys::TUNNEL_URL)?,
            hub_url: get(keys::HUB_URL).unwrap_or_default(),
            token_fingerprint: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TOKEN_FINGERPRINT_ANNOTATION))
                .cloned(),
            received_at: get(keys::RECEIVED_AT)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        };
        c.key().map_err(|_| CredsError::Field(keys::TLS_KEY))?;
        if c.certs().is_empty() {
            return Err(CredsError::Field(keys::TLS_CRT));
        }
        if c.ca_certs().is_empty() {
            return Err(CredsError::Field(keys::CA_CRT));
        }
        Ok(c)
    }

    /// Writes the Secret (server-side apply, owned by the Cluster object).
    pub async fn store(
        &self,
        secrets: &Api<Secret>,
        name: &str,
        owner: Option<OwnerReference>,
    ) -> Result<(), CredsError> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        };
        put(keys::TLS_KEY, &self.key_pem);
        put(keys::TLS_CRT, &self.cert_pem);
        put(keys::CA_CRT, &self.ca_pem);
        put(
            keys::SIGNING_KEYS,
            &serde_json::to_string(&self.signing_keys).unwrap_or_else(|_| "[]".into()),
        );
        put(keys::CLUSTER_ID, &self.cluster_id);
        put(keys::ORG, &self.org);
        put(keys::TUNNEL_URL, &self.tunnel_url);
        put(keys::HUB_URL, &self.hub_url);
        if let Some(t) = self.received_at {
            put(keys::RECEIVED_AT, &t.to_string());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                owner_references: owner.map(|o| vec![o]),
                annotations: self.token_fingerprint.as_ref().map(|f| {
                    BTreeMap::from([(TOKEN_FINGERPRINT_ANNOTATION.to_owned(), f.clone())])
                }),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "vworkspace-agent".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        let mut value = serde_json::to_value(&secret).map_err(|_| CredsError::Field("data"))?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        secrets
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(value),
            )
            .await?;
        Ok(())
    }

    /// The private key.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, rustls_pki_types::pem::Error> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
    }

    /// The client certificate chain, leaf first.
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }

    /// The CA certificates to trust for the hub.
    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
            .filter_map(Result::ok)
            .collect()
    }

    /// Trusted intent-signing keys (keys that fail their kid check are skipped).
    pub fn key_ring(&self) -> KeyRing {
        key_ring(&self.signing_keys)
    }

    /// `(not_before, not_after)` of the leaf certificate, Unix seconds.
    pub fn validity(&self) -> Option<(i64, i64)> {
        self.certs().first().and_then(|c| cert_validity(c))
    }

    /// Expiry of the leaf certificate, Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.validity().map(|(_, b)| b)
    }
}

/// Builds a key ring, skipping keys whose kid does not match.
pub fn key_ring(infos: &[PublicKeyInfo]) -> KeyRing {
    let mut ring = KeyRing::new();
    for info in infos {
        match vworkspace_protocol::PublicKey::try_from(info) {
            Ok(k) => {
                ring.insert(k);
            }
            Err(error) => tracing::warn!(kid = %info.kid, %error, "Ignoring invalid signing key"),
        }
    }
    ring
}

/// `(not_before, not_after)` of a DER certificate, Unix seconds.
pub fn cert_validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn cert_spki(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// First 16 hex characters of SHA-256 of the token (as upstream's `observedToken`).
pub fn token_fingerprint(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    hex::encode(&d.as_ref()[..8])
}
