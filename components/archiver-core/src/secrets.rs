//! Secrets at rest and at the door: AEAD sealing with the `staging_key`, and the admin token
//! compared in constant time.

use aes_gcm::Aes256Gcm;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use subtle::ConstantTimeEq;

/// Bytes of a nonce; the caller draws them at random for every sealing (24 bytes: random
/// nonces never repeat in practice, however many values are sealed).
pub const NONCE_BYTES: usize = 24;

/// The first byte of a sealed value: XChaCha20-Poly1305. Values sealed with AES-256-GCM before
/// (a 12-byte nonce first, no such byte) still open.
const SEALED_XCHACHA: u8 = 2;
const LEGACY_NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// A 256-bit key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the key must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("the sealed value is damaged, or was sealed with another key or for another owner")]
    CannotOpen,
}

impl std::str::FromStr for SecretKey {
    type Err = SecretError;

    fn from_str(hex_key: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SecretError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(key))
    }
}

/// Encrypts and authenticates `plaintext`, bound to `owner` (e.g. the connector id) so a sealed
/// value copied to another owner does not open. Returns base64 of the sealed bytes.
pub fn seal(key: &SecretKey, nonce: [u8; NONCE_BYTES], owner: &str, plaintext: &[u8]) -> String {
    BASE64.encode(seal_bytes(key, nonce, owner, plaintext))
}

/// Opens what [`seal`] produced for the same key and owner.
pub fn open(key: &SecretKey, owner: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
    let bytes = BASE64.decode(sealed).map_err(|_| SecretError::CannotOpen)?;
    open_bytes(key, owner, &bytes)
}

/// Bytes [`seal_bytes`] adds to a plaintext: the format byte, the nonce and the tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_BYTES + TAG_BYTES;

/// [`seal`] without base64: format byte, nonce and ciphertext as raw bytes, for binary values.
pub fn seal_bytes(
    key: &SecretKey,
    nonce: [u8; NONCE_BYTES],
    owner: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let payload = Payload {
        msg: plaintext,
        aad: owner.as_bytes(),
    };
    // Encryption fails only for inputs beyond the cipher's 256 GiB limit, which no caller has.
    let ciphertext = cipher.encrypt((&nonce).into(), payload).unwrap_or_default();
    let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    sealed.push(SEALED_XCHACHA);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Opens what [`seal_bytes`] produced for the same key and owner (or, before it, sealed with
/// AES-256-GCM).
pub fn open_bytes(key: &SecretKey, owner: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
    let payload = |msg| Payload {
        msg,
        aad: owner.as_bytes(),
    };
    if sealed.len() >= SEAL_OVERHEAD && sealed[0] == SEALED_XCHACHA {
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        if let Ok(plain) = cipher.decrypt(nonce.into(), payload(ciphertext)) {
            return Ok(plain);
        }
    }
    // Not the current format: a value sealed before it, whose random nonce may begin with
    // any byte. Its tag decides.
    if sealed.len() < LEGACY_NONCE_BYTES + TAG_BYTES {
        return Err(SecretError::CannotOpen);
    }
    let (nonce, ciphertext) = sealed.split_at(LEGACY_NONCE_BYTES);
    Aes256Gcm::new((&key.0).into())
        .decrypt(nonce.into(), payload(ciphertext))
        .map_err(|_| SecretError::CannotOpen)
}

/// Whether an `Authorization` header carries `Bearer <expected>`. The comparison takes the same
/// time whatever the presented token, so timing reveals nothing of the expected one.
pub fn bearer_matches(authorization: Option<&str>, expected: &str) -> bool {
    let presented = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = presented.as_bytes().ct_eq(expected.as_bytes());
    bool::from(same) && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        "11".repeat(32).parse().unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_owner() {
        let sealed = seal(&key(), [7; NONCE_BYTES], "att-main", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(open(&key(), "att-main", &sealed).unwrap(), b"hunter2");
        assert_eq!(
            open(&key(), "att-other", &sealed),
            Err(SecretError::CannotOpen)
        );
        let other: SecretKey = "22".repeat(32).parse().unwrap();
        assert_eq!(
            open(&other, "att-main", &sealed),
            Err(SecretError::CannotOpen)
        );
        let mut tampered = BASE64.decode(&sealed).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&key(), "att-main", &BASE64.encode(tampered)),
            Err(SecretError::CannotOpen)
        );
        assert_eq!(
            open(&key(), "att-main", "not base64!"),
            Err(SecretError::CannotOpen)
        );
    }

    /// A value sealed the earlier way: AES-256-GCM, its 12-byte nonce first.
    fn legacy_sealed(nonce: [u8; LEGACY_NONCE_BYTES], owner: &str, plain: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new((&key().0).into());
        let payload = Payload {
            msg: plain,
            aad: owner.as_bytes(),
        };
        let mut sealed = nonce.to_vec();
        sealed.extend(cipher.encrypt((&nonce).into(), payload).unwrap());
        sealed
    }

    #[test]
    fn values_sealed_with_aes_gcm_before_still_open() {
        let sealed = seal_bytes(&key(), [9; NONCE_BYTES], "o", b"new");
        assert_eq!(sealed[0], SEALED_XCHACHA);
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 3);
        // Any first byte, the current format's included.
        for first in [0u8, SEALED_XCHACHA, 0xff] {
            let mut nonce = [5; LEGACY_NONCE_BYTES];
            nonce[0] = first;
            let old = legacy_sealed(nonce, "o", b"staged before");
            assert_eq!(open_bytes(&key(), "o", &old).unwrap(), b"staged before");
            assert_eq!(open_bytes(&key(), "p", &old), Err(SecretError::CannotOpen));
        }
        assert_eq!(
            open_bytes(&key(), "o", &[SEALED_XCHACHA; 10]),
            Err(SecretError::CannotOpen)
        );
    }

    #[test]
    fn keys_are_64_hex_digits_and_never_printed() {
        assert!("ab".repeat(31).parse::<SecretKey>().is_err());
        assert!("zz".repeat(32).parse::<SecretKey>().is_err());
        assert_eq!(format!("{:?}", key()), "SecretKey(..)");
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret "),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("bearer s3cret"),
        ] {
            assert!(!bearer_matches(wrong, "s3cret"), "{wrong:?}");
        }
        assert!(
            !bearer_matches(Some("Bearer "), ""),
            "an empty token opens nothing"
        );
    }
}
