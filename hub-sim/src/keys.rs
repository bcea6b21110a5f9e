//! Ed25519 keys the hub signs with: intent-signing keys and the join-token key.
//!
//! Rotation adds a new key that becomes the signer at once; older keys stay
//! published (and valid for verification) until retired explicitly, so agents
//! that have not learned the new key yet keep working.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::store::{KeyRow, Store, StoreError, now};

/// Purpose tag of intent-signing keys.
pub const INTENT: &str = "intent";
/// Purpose tag of the join-token signing key.
pub const JOIN: &str = "join";

/// Errors from key handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the key table failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system RNG or ring could not produce a key pair.
    #[error("key generation failed")]
    Generate,
    /// A stored private key is not a valid Ed25519 PKCS#8 document.
    #[error("stored key {0} is unreadable")]
    Corrupt(String),
    /// No unretired key of that purpose exists.
    #[error("no active {0} key")]
    NoActiveKey(&'static str),
    /// Retiring this key would leave no active intent key.
    #[error("refusing to retire {0}: it is the only active intent key (rotate first)")]
    LastKey(String),
    /// No active key has this id.
    #[error("no active key with id {0}")]
    UnknownKey(String),
}

/// Key id: the first 8 bytes of SHA-256 over the raw public key, hex.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8])
}

/// A usable signing key.
pub struct SigningKey {
    /// Key id (see [`key_id`]).
    pub kid: String,
    /// The key pair that signs.
    pub pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Raw 32-byte Ed25519 public key.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// PKCS#8 v2 document (for JWT encoding). Never log it.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

/// A published public key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicKeyInfo {
    /// Key id (see [`key_id`]).
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, hex.
    pub public_key: String,
    /// When the key was generated, Unix seconds.
    pub created_at: i64,
    /// When it was retired, Unix seconds; `None` while verifiers must accept it.
    pub retired_at: Option<i64>,
}

fn generate(purpose: &str) -> Result<KeyRow, KeyError> {
    let rng = SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| KeyError::Generate)?;
    let public = pair.public_key().as_ref().to_vec();
    Ok(KeyRow {
        kid: key_id(&public),
        purpose: purpose.to_owned(),
        pkcs8: doc.as_ref().to_vec(),
        public,
        created_at: now(),
        retired_at: None,
    })
}

fn load(row: &KeyRow) -> Result<SigningKey, KeyError> {
    let pair =
        Ed25519KeyPair::from_pkcs8(&row.pkcs8).map_err(|_| KeyError::Corrupt(row.kid.clone()))?;
    Ok(SigningKey {
        kid: row.kid.clone(),
        pair,
        pkcs8: row.pkcs8.clone(),
    })
}

/// Makes sure one active key of each purpose exists (first start).
pub fn ensure_keys(store: &Store) -> Result<(), KeyError> {
    for purpose in [INTENT, JOIN] {
        if store.keys(purpose)?.iter().all(|k| k.retired_at.is_some()) {
            store.insert_key(&generate(purpose)?)?;
        }
    }
    Ok(())
}

/// The newest active key of a purpose: the one new signatures use.
pub fn active(store: &Store, purpose: &'static str) -> Result<SigningKey, KeyError> {
    let rows = store.keys(purpose)?;
    let row = rows
        .iter()
        .rev()
        .find(|k| k.retired_at.is_none())
        .ok_or(KeyError::NoActiveKey(purpose))?;
    load(row)
}

/// All keys of a purpose that verifiers must still accept (not retired).
pub fn published(store: &Store, purpose: &str) -> Result<Vec<PublicKeyInfo>, KeyError> {
    Ok(store
        .keys(purpose)?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| PublicKeyInfo {
            kid: k.kid,
            public_key: hex::encode(&k.public),
            created_at: k.created_at,
            retired_at: k.retired_at,
        })
        .collect())
}

/// Every key of a purpose, retired ones included (admin view).
pub fn all(store: &Store, purpose: &str) -> Result<Vec<PublicKeyInfo>, KeyError> {
    Ok(store
        .keys(purpose)?
        .into_iter()
        .map(|k| PublicKeyInfo {
            kid: k.kid,
            public_key: hex::encode(&k.public),
            created_at: k.created_at,
            retired_at: k.retired_at,
        })
        .collect())
}

/// Adds a new intent-signing key; it signs from now on. Returns its id.
pub fn rotate(store: &Store) -> Result<String, KeyError> {
    let row = generate(INTENT)?;
    let kid = row.kid.clone();
    store.insert_key(&row)?;
    Ok(kid)
}

/// Retires an intent key (it is no longer published nor accepted).
pub fn retire(store: &Store, kid: &str) -> Result<(), KeyError> {
    let active: Vec<_> = store
        .keys(INTENT)?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .collect();
    if !active.iter().any(|k| k.kid == kid) {
        return Err(KeyError::UnknownKey(kid.to_owned()));
    }
    if active.len() == 1 {
        return Err(KeyError::LastKey(kid.to_owned()));
    }
    store.retire_key(kid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_until_retired() {
        let store = Store::in_memory().unwrap();
        ensure_keys(&store).unwrap();
        ensure_keys(&store).unwrap();
        let first = active(&store, INTENT).unwrap();
        assert_eq!(published(&store, INTENT).unwrap().len(), 1);
        assert!(matches!(
            retire(&store, &first.kid),
            Err(KeyError::LastKey(_))
        ));
        let second = rotate(&store).unwrap();
        assert_eq!(active(&store, INTENT).unwrap().kid, second);
        assert_eq!(published(&store, INTENT).unwrap().len(), 2);
        retire(&store, &first.kid).unwrap();
        let left = published(&store, INTENT).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kid, second);
        assert_eq!(all(&store, INTENT).unwrap().len(), 2);
        assert_ne!(active(&store, JOIN).unwrap().kid, second);
    }
}
