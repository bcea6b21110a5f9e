//! Upstream approval claims: `vws1.<body>.<digest>`.
//!
//! `body` is base64url (no padding) of canonical JSON (sorted keys, no spaces,
//! non-ASCII escaped as `\uXXXX` like Python's `json.dumps(sort_keys=True,
//! separators=(",", ":"))`, which the hub uses); `digest` is the lowercase hex
//! HMAC-SHA256 of the body *string* under a secret shared with the hub.
//! Verification recomputes the HMAC over the body as received, so it never
//! depends on re-serialising.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Claim prefix (format version).
pub const PREFIX: &str = "vws1";

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// approvedAt (RFC 3339).
    pub at: String,
    /// approvedBy.
    pub by: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Operation name.
    pub op: String,
    /// Hub request id.
    pub rid: i64,
    /// Payload version, always 1.
    pub v: i64,
}

/// Why a claim is refused. Messages never include the claim or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// No claim in `spec.approvals.claim`.
    #[error("approval claim required")]
    Missing,
    /// The agent has no shared secret configured.
    #[error("no approval secret is configured on the agent (--approval-secret)")]
    NoSecret,
    /// Not three dot-separated parts with the `vws1` prefix.
    #[error("approval claim is malformed")]
    Malformed,
    /// The HMAC does not match.
    #[error("approval claim signature does not match")]
    BadSignature,
    /// The payload is not the expected JSON.
    #[error("approval claim payload is invalid")]
    BadPayload,
    /// `v` is not 1.
    #[error("approval claim version {0} is not supported")]
    Version(i64),
    /// `op` names another Operation.
    #[error("approval claim is for operation {0:?}")]
    WrongOperation(String),
    /// `exp` is in the past.
    #[error("approval claim expired")]
    Expired,
}

/// Signs `claim` (what the hub does); used by tests and tools.
pub fn sign_claim(secret: &[u8], claim: &Claim) -> String {
    let body = URL_SAFE_NO_PAD.encode(canonical_json(claim));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body.as_bytes());
    format!("{PREFIX}.{body}.{}", hex::encode(tag.as_ref()))
}

/// Verifies `token` for the Operation `op_name` at unix time `now`.
pub fn verify_claim(
    secret: Option<&[u8]>,
    token: Option<&str>,
    op_name: &str,
    now: i64,
) -> Result<Claim, ClaimError> {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ClaimError::Missing)?;
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(ClaimError::NoSecret)?;
    let mut parts = token.split('.');
    let (Some(prefix), Some(body), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ClaimError::Malformed);
    };
    if prefix != PREFIX {
        return Err(ClaimError::Malformed);
    }
    let digest = hex::decode(digest).map_err(|_| ClaimError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // Constant-time comparison.
    hmac::verify(&key, body.as_bytes(), &digest).map_err(|_| ClaimError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| ClaimError::BadPayload)?;
    let claim: Claim = serde_json::from_slice(&json).map_err(|_| ClaimError::BadPayload)?;
    if claim.v != 1 {
        return Err(ClaimError::Version(claim.v));
    }
    if claim.op.trim() != op_name.trim() {
        return Err(ClaimError::WrongOperation(claim.op.clone()));
    }
    if now > claim.exp {
        return Err(ClaimError::Expired);
    }
    Ok(claim)
}

/// Canonical JSON of a claim: keys sorted, no spaces, ASCII only.
pub fn canonical_json(c: &Claim) -> String {
    format!(
        "{{\"at\":{},\"by\":{},\"exp\":{},\"op\":{},\"rid\":{},\"v\":{}}}",
        quote(&c.at),
        quote(&c.by),
        c.exp,
        quote(&c.op),
        c.rid,
        c.v
    )
}

/// A JSON string literal escaped as Python's `json.dumps` does by default.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cr3t-shared";

    fn claim(by: &str) -> Claim {
        Claim {
            at: "2026-11-27T03:00:00Z".into(),
            by: by.into(),
            exp: 1_900_000_000,
            op: "upgrade-nc".into(),
            rid: 42,
            v: 1,
        }
    }

    // Vectors computed with Python: base64.urlsafe_b64encode(json.dumps(p,
    // sort_keys=True, separators=(",", ":")).encode()).rstrip(b"=") and
    // hmac.new(secret, body, hashlib.sha256).hexdigest().
    const VECTOR_ASCII: &str = "vws1.eyJhdCI6IjIwMjYtMTEtMjdUMDM6MDA6MDBaIiwiYnkiOiJqYW5lQGV4YW1wbGUuY29tIiwiZXhwIjoxOTAwMDAwMDAwLCJvcCI6InVwZ3JhZGUtbmMiLCJyaWQiOjQyLCJ2IjoxfQ.aa9f676f0b67fb8ea264bccbb0b9ee06b88bd2191c82ac372718d1ad3e026073";
    const VECTOR_UNICODE: &str = "vws1.eyJhdCI6IjIwMjYtMTEtMjdUMDM6MDA6MDBaIiwiYnkiOiJab1x1MDBlYiBcdTAwZGNuYWwiLCJleHAiOjE5MDAwMDAwMDAsIm9wIjoidXBncmFkZS1uYyIsInJpZCI6NDIsInYiOjF9.ca249598a51a061085d73111944faee3d9c4cfde87d72d3cfc5d247e3cdba997";

    #[test]
    fn signing_matches_the_hub_bit_for_bit() {
        assert_eq!(sign_claim(SECRET, &claim("jane@example.com")), VECTOR_ASCII);
        assert_eq!(sign_claim(SECRET, &claim("Zoë Ünal")), VECTOR_UNICODE);
        assert_eq!(
            canonical_json(&claim("jane@example.com")),
            r#"{"at":"2026-11-27T03:00:00Z","by":"jane@example.com","exp":1900000000,"op":"upgrade-nc","rid":42,"v":1}"#
        );
    }

    #[test]
    fn verification_table() {
        let now = 1_800_000_000;
        let good = VECTOR_ASCII;
        let mut tampered = good.to_string();
        tampered.replace_range(10..11, "Z");
        let other_op = sign_claim(
            SECRET,
            &Claim {
                op: "backup-nc".into(),
                ..claim("x")
            },
        );
        let v2 = sign_claim(SECRET, &Claim { v: 2, ..claim("x") });
        let wrong_prefix = good.replacen("vws1", "vws2", 1);
        let bad_json = {
            let body = URL_SAFE_NO_PAD.encode("not json");
            let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
            format!(
                "vws1.{body}.{}",
                hex::encode(hmac::sign(&key, body.as_bytes()).as_ref())
            )
        };
        type Case<'a> = (
            &'a str,
            Option<&'a [u8]>,
            Option<&'a str>,
            i64,
            Result<(), ClaimError>,
        );
        let table: Vec<Case<'_>> = vec![
            ("valid", Some(SECRET), Some(good), now, Ok(())),
            (
                "valid at expiry",
                Some(SECRET),
                Some(good),
                1_900_000_000,
                Ok(()),
            ),
            ("missing", Some(SECRET), None, now, Err(ClaimError::Missing)),
            (
                "blank",
                Some(SECRET),
                Some("  "),
                now,
                Err(ClaimError::Missing),
            ),
            (
                "no secret",
                None,
                Some(good),
                now,
                Err(ClaimError::NoSecret),
            ),
            (
                "wrong secret",
                Some(b"other"),
                Some(good),
                now,
                Err(ClaimError::BadSignature),
            ),
            (
                "tampered body",
                Some(SECRET),
                Some(&tampered),
                now,
                Err(ClaimError::BadSignature),
            ),
            (
                "wrong prefix",
                Some(SECRET),
                Some(&wrong_prefix),
                now,
                Err(ClaimError::Malformed),
            ),
            (
                "two parts",
                Some(SECRET),
                Some("vws1.abc"),
                now,
                Err(ClaimError::Malformed),
            ),
            (
                "non-hex digest",
                Some(SECRET),
                Some("vws1.abc.zz"),
                now,
                Err(ClaimError::Malformed),
            ),
            (
                "expired",
                Some(SECRET),
                Some(good),
                1_900_000_001,
                Err(ClaimError::Expired),
            ),
            (
                "other operation",
                Some(SECRET),
                Some(&other_op),
                now,
                Err(ClaimError::WrongOperation("backup-nc".into())),
            ),
            (
                "version 2",
                Some(SECRET),
                Some(&v2),
                now,
                Err(ClaimError::Version(2)),
            ),
            (
                "bad payload",
                Some(SECRET),
                Some(&bad_json),
                now,
                Err(ClaimError::BadPayload),
            ),
        ];
        for (name, secret, token, now, want) in table {
            let got = verify_claim(secret, token, "upgrade-nc", now).map(|_| ());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn errors_never_contain_secret_or_claim() {
        let err = verify_claim(Some(b"other"), Some(VECTOR_ASCII), "upgrade-nc", 0)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("aa9f676f") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}
