//! Join tokens: EdDSA JWTs that let one cluster enroll once.
//!
//! The hub issues and verifies them; the agent, which cannot verify before
//! enrollment, parses them to learn the hub URL and CA pin but still checks
//! shape and expiry. The raw token is a secret and never printed.

use crate::enrollment::EnrollErrorCode;
use crate::intent::{KeyRing, PublicKey, SignError, key_id, pkcs8_from_seed};
use crate::jwt_crypto::install_jwt_crypto;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The `aud` claim of every join token.
pub const JOIN_TOKEN_AUDIENCE: &str = "vworkspace-enroll";
/// Default lifetime of a join token, seconds (1 h).
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Longest lifetime accepted, seconds (24 h).
pub const MAX_TTL_SECS: i64 = 24 * 3600;
/// Clock skew allowed when checking `iat` and `exp`, seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Longest token accepted, bytes (tokens are a few hundred bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Claims of a join token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// Issuer (the hub's name or URL).
    pub iss: String,
    /// Audience, always [`JOIN_TOKEN_AUDIENCE`].
    pub aud: String,
    /// Base URL of the hub, `https://HOST[:PORT]`; enrollment is `{hub_url}/v1/enroll`.
    pub hub_url: String,
    /// Lowercase hex SHA-256 of the DER of the hub CA certificate (the TLS pin).
    pub ca_sha256: String,
    /// Cluster name.
    pub cluster: String,
    /// Organisation.
    pub org: String,
    /// Single-use token id.
    pub jti: String,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// Expiry time, Unix seconds.
    pub exp: i64,
}

impl JoinClaims {
    /// Checks everything that does not depend on the clock or a key.
    pub fn check_shape(&self) -> Result<(), JoinTokenError> {
        let nonempty = |claim: &'static str, v: &str| {
            if v.is_empty() || v.len() > 253 {
                Err(JoinTokenError::InvalidClaim {
                    claim,
                    reason: "must be 1 to 253 characters",
                })
            } else {
                Ok(())
            }
        };
        nonempty("iss", &self.iss)?;
        nonempty("cluster", &self.cluster)?;
        nonempty("org", &self.org)?;
        nonempty("jti", &self.jti)?;
        if self.aud != JOIN_TOKEN_AUDIENCE {
            return Err(JoinTokenError::Audience);
        }
        if !self.hub_url.starts_with("https://")
            || self.hub_url.len() <= "https://".len()
            || self.hub_url.len() > 2048
        {
            return Err(JoinTokenError::InvalidClaim {
                claim: "hub_url",
                reason: "must be an https:// URL",
            });
        }
        if self.ca_sha256.len() != 64
            || !self
                .ca_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(JoinTokenError::InvalidClaim {
                claim: "ca_sha256",
                reason: "must be 64 lowercase hex characters",
            });
        }
        if self.exp <= self.iat {
            return Err(JoinTokenError::InvalidClaim {
                claim: "exp",
                reason: "must be after iat",
            });
        }
        if self.exp - self.iat > MAX_TTL_SECS {
            return Err(JoinTokenError::InvalidClaim {
                claim: "exp",
                reason: "lifetime exceeds 24 hours",
            });
        }
        Ok(())
    }

    /// Checks `iat`/`exp` against `now` with the skew allowance.
    pub fn check_times(&self, now: i64) -> Result<(), JoinTokenError> {
        if now > self.exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JoinTokenError::Expired { exp: self.exp, now });
        }
        if self.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JoinTokenError::NotYetValid { iat: self.iat, now });
        }
        Ok(())
    }

    /// The enrollment URL (`{hub_url}/v1/enroll`).
    pub fn enroll_url(&self) -> String {
        format!(
            "{}{}",
            self.hub_url.trim_end_matches('/'),
            crate::enrollment::ENROLL_PATH
        )
    }
}

/// Why a join token was refused. Messages never contain the token.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    /// Not a well-formed EdDSA JWT with the expected claims.
    #[error("join token is malformed: {0}")]
    Malformed(&'static str),
    /// A claim has a bad value.
    #[error("join token claim {claim:?} is invalid: {reason}")]
    InvalidClaim {
        /// Claim name.
        claim: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// `aud` is not [`JOIN_TOKEN_AUDIENCE`].
    #[error("join token audience is not {JOIN_TOKEN_AUDIENCE:?}")]
    Audience,
    /// The token has expired.
    #[error("join token expired at {exp} (now {now})")]
    Expired {
        /// Expiry claim.
        exp: i64,
        /// Clock used.
        now: i64,
    },
    /// `iat` is in the future beyond the skew allowance.
    #[error("join token issued at {iat} is in the future (now {now})")]
    NotYetValid {
        /// Issue time claim.
        iat: i64,
        /// Clock used.
        now: i64,
    },
    /// No key in the ring has the header's `kid`.
    #[error("join token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("join token signature does not verify")]
    BadSignature,
    /// Issuing failed (bad key).
    #[error("cannot issue join token: {0}")]
    Issue(String),
}

impl JoinTokenError {
    /// The enrollment error code the hub answers with.
    pub fn enroll_code(&self) -> EnrollErrorCode {
        match self {
            JoinTokenError::Expired { .. } => EnrollErrorCode::TokenExpired,
            JoinTokenError::Audience => EnrollErrorCode::TokenAudience,
            JoinTokenError::Issue(_) => EnrollErrorCode::Internal,
            _ => EnrollErrorCode::TokenInvalid,
        }
    }
}

/// A join token with its (unverified or verified) claims.
///
/// The raw string is a secret: `Debug` and `Display` print only
/// `JoinToken(jti=…, cluster=…)`; use [`JoinToken::expose_secret`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    raw: String,
    claims: JoinClaims,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken(jti={}, cluster={})",
            self.claims.jti, self.claims.cluster
        )
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl JoinToken {
    /// Parses a token WITHOUT verifying its signature (the agent side):
    /// checks the JWT shape, `alg: EdDSA`, every claim and expiry at `now`.
    pub fn parse(raw: &str, now: i64) -> Result<Self, JoinTokenError> {
        install_jwt_crypto();
        let raw = raw.trim();
        if raw.len() > MAX_TOKEN_BYTES {
            return Err(JoinTokenError::Malformed("token is too long"));
        }
        if raw.split('.').count() != 3 {
            return Err(JoinTokenError::Malformed(
                "expected three dot-separated parts",
            ));
        }
        let header = jsonwebtoken::decode_header(raw)
            .map_err(|_| JoinTokenError::Malformed("bad header"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(JoinTokenError::Malformed("alg must be EdDSA"));
        }
        let data = jsonwebtoken::dangerous::insecure_decode::<JoinClaims>(raw)
            .map_err(|_| JoinTokenError::Malformed("claims are not valid join token claims"))?;
        let claims = data.claims;
        claims.check_shape()?;
        claims.check_times(now)?;
        Ok(Self {
            raw: raw.to_owned(),
            claims,
        })
    }

    /// The claims.
    pub fn claims(&self) -> &JoinClaims {
        &self.claims
    }

    /// The raw token, to put in an enrollment request. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.raw
    }
}

/// Verifies a token completely (the hub side): `kid` header, EdDSA signature
/// against `keys`, claims and times. Single use (`jti`) is the caller's job.
pub fn verify_join_token(raw: &str, keys: &KeyRing, now: i64) -> Result<JoinToken, JoinTokenError> {
    install_jwt_crypto();
    let raw = raw.trim();
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(JoinTokenError::Malformed("token is too long"));
    }
    let header =
        jsonwebtoken::decode_header(raw).map_err(|_| JoinTokenError::Malformed("bad header"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(JoinTokenError::Malformed("alg must be EdDSA"));
    }
    let kid = header
        .kid
        .ok_or(JoinTokenError::Malformed("header has no kid"))?;
    let key = keys
        .get(&kid)
        .ok_or_else(|| JoinTokenError::UnknownKey(kid.clone()))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<JoinClaims>(
        raw,
        &DecodingKey::from_ed_der(key.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidSignature => JoinTokenError::BadSignature,
        _ => JoinTokenError::Malformed("claims are not valid join token claims"),
    })?;
    data.claims.check_shape()?;
    data.claims.check_times(now)?;
    Ok(JoinToken {
        raw: raw.to_owned(),
        claims: data.claims,
    })
}

/// The hub's join-token signing key. `Debug` shows only the kid.
pub struct JoinTokenIssuer {
    key: EncodingKey,
    public: PublicKey,
}

impl fmt::Debug for JoinTokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinTokenIssuer(kid={})", self.public.kid())
    }
}

impl JoinTokenIssuer {
    /// Loads a key from PKCS#8 (v1 or v2) DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())
            .map_err(|e| SignError::InvalidKey(e.to_string()))?;
        Ok(Self {
            key: EncodingKey::from_ed_der(der),
            public,
        })
    }

    /// Loads a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, SignError> {
        Self::from_pkcs8(&pkcs8_from_seed(seed))
    }

    /// Generates a new key; returns it with its PKCS#8 v2 document to store.
    pub fn generate() -> Result<(Self, Vec<u8>), SignError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| SignError::Random)?;
        Ok((Self::from_pkcs8(doc.as_ref())?, doc.as_ref().to_vec()))
    }

    /// Key id (also the JWT header `kid`).
    pub fn kid(&self) -> String {
        key_id(self.public.as_bytes())
    }

    /// The public half, to put in the hub's key ring.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `claims` after checking their shape.
    pub fn issue(&self, claims: &JoinClaims) -> Result<JoinToken, JoinTokenError> {
        install_jwt_crypto();
        claims.check_shape()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        let raw = jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| JoinTokenError::Issue(e.to_string()))?;
        Ok(JoinToken {
            raw,
            claims: claims.clone(),
        })
    }
}

/// Lowercase hex SHA-256 of a certificate's DER (the `ca_sha256` pin).
pub fn ca_sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}
