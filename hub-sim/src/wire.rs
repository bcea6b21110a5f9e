//! Glue between hub-sim's keys and `vworkspace-protocol`'s join tokens.

use vworkspace_protocol::{
    JOIN_TOKEN_AUDIENCE, JoinClaims, JoinTokenError, JoinTokenIssuer, KeyRing, PublicKey,
};

use crate::keys::{PublicKeyInfo, SigningKey};

/// Issues a join token (EdDSA JWT) signed with the hub's join key.
pub fn issue_join_token(
    key: &SigningKey,
    hub_url: &str,
    ca_sha256: &str,
    cluster: &str,
    org: &str,
    jti: &str,
    expires_at: i64,
) -> Result<String, JoinTokenError> {
    let issuer = JoinTokenIssuer::from_pkcs8(key.pkcs8())
        .map_err(|e| JoinTokenError::Issue(e.to_string()))?;
    let claims = JoinClaims {
        iss: "hub-sim".into(),
        aud: JOIN_TOKEN_AUDIENCE.into(),
        hub_url: hub_url.into(),
        ca_sha256: ca_sha256.into(),
        cluster: cluster.into(),
        org: org.into(),
        jti: jti.into(),
        iat: crate::store::now(),
        exp: expires_at,
    };
    Ok(issuer.issue(&claims)?.expose_secret().to_owned())
}

/// A key ring of published keys (for verifying join tokens).
pub fn key_ring(keys: &[PublicKeyInfo]) -> KeyRing {
    let mut ring = KeyRing::new();
    for k in keys {
        if let Ok(pk) = PublicKey::from_hex(&k.public_key) {
            ring.insert(pk);
        }
    }
    ring
}

/// `wss://host:port/v1/tunnel` for an `https://host:port` hub URL.
pub fn tunnel_url(hub_url: &str) -> String {
    let base = hub_url.trim_end_matches('/');
    let rest = base.strip_prefix("https://").unwrap_or(base);
    format!("wss://{rest}{}", vworkspace_protocol::TUNNEL_PATH)
}
