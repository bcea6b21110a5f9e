//! Intent-signing keys: key ids, public keys, key rings (with the full
//! verification of a signed intent) and the hub's private signing key.

use std::collections::BTreeMap;
use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{
    IntentPayload, Rejection, SIGNATURE_LEN, VerifiedIntent, VerifyContext, decode_payload,
    signing_input,
};
use crate::frame::{PublicKeyInfo, SignedIntent};

/// Key id of a raw 32-byte Ed25519 public key: the first 16 hex characters
/// (8 bytes) of its SHA-256, lowercase.
pub fn key_id(raw_public_key: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, raw_public_key);
    hex::encode(&d.as_ref()[..8])
}

/// An Ed25519 public key (raw 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From the raw 32 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, KeyRingError> {
        let a: [u8; 32] = raw
            .try_into()
            .map_err(|_| KeyRingError::BadLength(raw.len()))?;
        Ok(Self(a))
    }

    /// From 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, KeyRingError> {
        let raw = hex::decode(s.trim()).map_err(|_| KeyRingError::BadHex)?;
        Self::from_bytes(&raw)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Key id, see [`key_id`].
    pub fn kid(&self) -> String {
        key_id(&self.0)
    }

    /// The wire description of this key.
    pub fn to_info(&self) -> PublicKeyInfo {
        PublicKeyInfo {
            kid: self.kid(),
            public_key_hex: hex::encode(self.0),
        }
    }

    /// Checks an Ed25519 signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(kid={})", self.kid())
    }
}

impl TryFrom<&PublicKeyInfo> for PublicKey {
    type Error = KeyRingError;
    /// Parses the key and checks that `kid` matches it.
    fn try_from(info: &PublicKeyInfo) -> Result<Self, KeyRingError> {
        let k = PublicKey::from_hex(&info.public_key_hex)?;
        if k.kid() != info.kid {
            return Err(KeyRingError::KidMismatch {
                claimed: info.kid.clone(),
                actual: k.kid(),
            });
        }
        Ok(k)
    }
}

/// Why a public key or key ring could not be built.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// The key is not 32 bytes.
    #[error("public key must be 32 bytes, got {0}")]
    BadLength(usize),
    /// The key is not valid hex.
    #[error("public key is not valid hex")]
    BadHex,
    /// The advertised kid does not belong to the key.
    #[error("key id {claimed:?} does not match the key (its id is {actual:?})")]
    KidMismatch {
        /// Kid as advertised.
        claimed: String,
        /// Kid computed from the key.
        actual: String,
    },
}

/// Public keys trusted for intents (and join tokens), by key id. Holding
/// several keys lets the hub rotate: add the new key, sign with it, later
/// drop the old one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, PublicKey>,
}

impl KeyRing {
    /// An empty ring (verifies nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A ring from wire key descriptions; every kid is checked.
    pub fn from_infos<'a>(
        infos: impl IntoIterator<Item = &'a PublicKeyInfo>,
    ) -> Result<Self, KeyRingError> {
        let mut ring = Self::new();
        for info in infos {
            ring.insert(PublicKey::try_from(info)?);
        }
        Ok(ring)
    }

    /// Adds a key; returns its kid.
    pub fn insert(&mut self, key: PublicKey) -> String {
        let kid = key.kid();
        self.keys.insert(kid.clone(), key);
        kid
    }

    /// Removes a key by id.
    pub fn remove(&mut self, kid: &str) -> Option<PublicKey> {
        self.keys.remove(kid)
    }

    /// Looks a key up by id.
    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Key ids, sorted.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Wire descriptions of every key, sorted by kid.
    pub fn to_infos(&self) -> Vec<PublicKeyInfo> {
        self.keys.values().map(PublicKey::to_info).collect()
    }

    /// Verifies a signed intent completely; see [`Rejection`] for the checks
    /// and their order.
    pub fn verify(
        &self,
        intent: &SignedIntent,
        ctx: &VerifyContext<'_>,
    ) -> Result<VerifiedIntent, Rejection> {
        if intent.payload.len() > ctx.max_payload_bytes {
            return Err(Rejection::Oversized {
                size: intent.payload.len(),
                max: ctx.max_payload_bytes,
            });
        }
        let key = self.get(&intent.kid).ok_or_else(|| Rejection::UnknownKey {
            kid: intent.kid.clone(),
        })?;
        if intent.signature.len() != SIGNATURE_LEN
            || !key.verify(&intent.signing_input(), &intent.signature)
        {
            return Err(Rejection::BadSignature);
        }
        let payload = decode_payload(&intent.payload, ctx.max_depth)?;
        if payload.cluster_id != ctx.cluster_id {
            return Err(Rejection::ForeignCluster {
                expected: ctx.cluster_id.to_owned(),
                got: payload.cluster_id,
            });
        }
        if let Some(org) = ctx.org
            && org != payload.org
        {
            return Err(Rejection::ForeignOrg {
                cluster: payload.cluster_id,
                expected: org.to_owned(),
                got: payload.org,
            });
        }
        if payload.expires_at < payload.issued_at {
            return Err(Rejection::Malformed(
                "expires_at is before issued_at".into(),
            ));
        }
        let skew = ctx.clock_skew_secs.max(0);
        if ctx.now > payload.expires_at.saturating_add(skew) {
            return Err(Rejection::Expired {
                expires_at: payload.expires_at,
                now: ctx.now,
            });
        }
        if payload.issued_at > ctx.now.saturating_add(skew) {
            return Err(Rejection::NotYetValid {
                issued_at: payload.issued_at,
                now: ctx.now,
            });
        }
        if let Some(applied) = ctx.applied_version
            && payload.version <= applied
        {
            return Err(Rejection::Replayed {
                version: payload.version,
                applied,
            });
        }
        Ok(VerifiedIntent {
            kid: intent.kid.clone(),
            payload,
        })
    }
}

/// Why an intent could not be signed, or a signing key loaded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The private key bytes were rejected.
    #[error("invalid Ed25519 private key: {0}")]
    InvalidKey(String),
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
    /// The payload could not be encoded.
    #[error("intent payload cannot be encoded: {0}")]
    Encode(String),
}

/// The hub's intent-signing key (private). `Debug` shows only the kid.
pub struct IntentSigner {
    pair: Ed25519KeyPair,
    kid: String,
}

impl fmt::Debug for IntentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntentSigner(kid={})", self.kid)
    }
}

impl IntentSigner {
    /// Generates a new key; returns it with its PKCS#8 v2 document to store.
    pub fn generate() -> Result<(Self, Vec<u8>), SignError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SignError::Random)?;
        let signer = Self::from_pkcs8(doc.as_ref())?;
        Ok((signer, doc.as_ref().to_vec()))
    }

    /// Loads a key from PKCS#8 (v1 or v2) DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// Loads a key from its 32-byte seed (used for deterministic test vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let kid = key_id(pair.public_key().as_ref());
        Self { pair, kid }
    }

    /// Key id of this key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(a)
    }

    /// Encodes the payload (named MessagePack) and signs it.
    pub fn sign(&self, payload: &IntentPayload) -> Result<SignedIntent, SignError> {
        let bytes =
            rmp_serde::to_vec_named(payload).map_err(|e| SignError::Encode(e.to_string()))?;
        Ok(self.sign_bytes(bytes))
    }

    /// Signs payload bytes as they are (no check that they decode).
    pub fn sign_bytes(&self, payload: Vec<u8>) -> SignedIntent {
        let signature = self.pair.sign(&signing_input(&payload)).as_ref().to_vec();
        SignedIntent {
            kid: self.kid.clone(),
            payload,
            signature,
        }
    }
}

/// PKCS#8 v1 DER document wrapping a raw 32-byte Ed25519 seed (RFC 8410).
pub fn pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut v = PREFIX.to_vec();
    v.extend_from_slice(seed);
    v
}
