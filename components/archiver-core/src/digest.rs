//! SHA-256 helpers shared by the evidence headers and the deterministic ids.

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 over several fields, each length-prefixed so that `("ab", "c")` and `("a", "bc")`
/// never collide. Returned as lowercase hex.
pub fn fields_sha256_hex(fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// A SHA-256 computed piece by piece, for bytes that never sit in memory whole.
#[derive(Default, Clone)]
pub struct StreamingSha256(Sha256);

impl StreamingSha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex of the digest of everything given so far.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input_is_the_known_constant() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_digest_in_pieces_equals_the_digest_of_the_whole() {
        let mut pieces = StreamingSha256::default();
        pieces.update(b"hello ");
        pieces.update(b"world");
        assert_eq!(pieces.finish_hex(), sha256_hex(b"hello world"));
    }

    #[test]
    fn field_boundaries_change_the_digest() {
        assert_ne!(
            fields_sha256_hex(&["ab", "c"]),
            fields_sha256_hex(&["a", "bc"])
        );
        assert_eq!(
            fields_sha256_hex(&["a", "b"]),
            fields_sha256_hex(&["a", "b"])
        );
    }
}
