//! Expired-certificate recovery (`POST /v1/recover` over HTTPS).
//!
//! A cluster that was offline past its certificate's expiry proves that it
//! still holds the private key of its newest certificate and gets a fresh one,
//! as long as the hub's recovery window has not passed and the identity was
//! not revoked. The proof is a signature with that key over both the old
//! certificate and the CSR of the new key, so a captured request is useless to
//! anyone else: it yields a certificate for a key only the cluster holds.

use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::enrollment::EnrollResponse;

/// Path of the recovery endpoint on the hub (same listener as enrollment).
pub const RECOVER_PATH: &str = "/v1/recover";

/// Domain separation for the proof of possession.
pub const RECOVERY_CONTEXT: &[u8] = b"vworkspace/recover/v1\0";

/// The hub's default recovery window: 30 days after the certificate's expiry.
pub const DEFAULT_RECOVERY_WINDOW_SECS: u64 = 30 * 86_400;

/// Request body. `Debug` shows only sizes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverRequest {
    /// PEM of the cluster's current (usually expired) client certificate.
    pub certificate_pem: String,
    /// PEM PKCS#10 CSR for a fresh key generated in the cluster.
    pub csr_pem: String,
    /// Hex of the signature, with the current certificate's key, over
    /// [`signing_input`] (ECDSA P-256 SHA-256 DER, or Ed25519 64 bytes).
    pub proof_hex: String,
}

impl fmt::Debug for RecoverRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoverRequest")
            .field("certificate_pem_len", &self.certificate_pem.len())
            .field("csr_pem_len", &self.csr_pem.len())
            .finish_non_exhaustive()
    }
}

/// Body of a `200 OK` answer: the enrollment answer plus the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverResponse {
    /// Same fields and meaning as the enrollment answer.
    #[serde(flatten)]
    pub enrolled: EnrollResponse,
    /// How long after a certificate's expiry this hub still accepts recovery.
    pub recovery_window_secs: u64,
}

/// Why a proof of possession could not be made or checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The key is neither ECDSA P-256 nor Ed25519 PKCS#8.
    #[error("the private key is not a PKCS#8 ECDSA P-256 or Ed25519 key")]
    UnsupportedKey,
    /// Signing failed.
    #[error("signing the proof of possession failed")]
    Sign,
    /// The signature does not verify with the certificate's key.
    #[error("the proof of possession does not verify with the certificate's key")]
    BadProof,
}

/// Key type of the certificate being recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofKey {
    /// ECDSA P-256; the public key is the uncompressed SEC1 point.
    EcdsaP256,
    /// Ed25519; the public key is the raw 32 bytes.
    Ed25519,
}

/// What the proof signs:
/// `"vworkspace/recover/v1" 0x00 ‖ SHA-256(certificate DER) ‖ SHA-256(CSR DER)`.
pub fn signing_input(certificate_der: &[u8], csr_der: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECOVERY_CONTEXT.len() + 64);
    out.extend_from_slice(RECOVERY_CONTEXT);
    out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, certificate_der).as_ref());
    out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, csr_der).as_ref());
    out
}

/// Signs `input` with a PKCS#8 private key (ECDSA P-256 or Ed25519).
pub fn sign_proof(pkcs8_der: &[u8], input: &[u8]) -> Result<Vec<u8>, RecoveryError> {
    let rng = ring::rand::SystemRandom::new();
    if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8_der,
        &rng,
    ) {
        return k
            .sign(&rng, input)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| RecoveryError::Sign);
    }
    let k = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der)
        .map_err(|_| RecoveryError::UnsupportedKey)?;
    Ok(k.sign(input).as_ref().to_vec())
}

/// The public key of a PKCS#8 Ed25519 key (for vectors and tests).
pub fn ed25519_public_key(pkcs8_der: &[u8]) -> Result<Vec<u8>, RecoveryError> {
    let k = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8_der)
        .map_err(|_| RecoveryError::UnsupportedKey)?;
    Ok(k.public_key().as_ref().to_vec())
}

/// Checks a proof of possession against the certificate's public key.
pub fn verify_proof(
    key: ProofKey,
    public_key: &[u8],
    input: &[u8],
    proof: &[u8],
) -> Result<(), RecoveryError> {
    let alg: &dyn signature::VerificationAlgorithm = match key {
        ProofKey::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        ProofKey::Ed25519 => &signature::ED25519,
    };
    signature::UnparsedPublicKey::new(alg, public_key)
        .verify(input, proof)
        .map_err(|_| RecoveryError::BadProof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ecdsa_proof_verifies_only_over_its_own_input() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let kp = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let input = signing_input(b"cert", b"csr");
        let proof = sign_proof(pkcs8.as_ref(), &input).unwrap();
        let pk = kp.public_key().as_ref();
        assert_eq!(
            verify_proof(ProofKey::EcdsaP256, pk, &input, &proof),
            Ok(())
        );
        let other = signing_input(b"cert", b"another csr");
        assert_eq!(
            verify_proof(ProofKey::EcdsaP256, pk, &other, &proof),
            Err(RecoveryError::BadProof)
        );
    }

    #[test]
    fn a_key_of_another_type_is_refused() {
        assert_eq!(
            sign_proof(b"not a key", b"x"),
            Err(RecoveryError::UnsupportedKey)
        );
    }

    #[test]
    fn the_request_debug_hides_the_material() {
        let r = RecoverRequest {
            certificate_pem: "CERT".into(),
            csr_pem: "CSR".into(),
            proof_hex: "abcd".into(),
        };
        let d = format!("{r:?}");
        assert!(!d.contains("CERT") && !d.contains("abcd"), "{d}");
    }
}
