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
