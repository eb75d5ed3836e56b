//! SHA-256 helpers shared by the evidence headers and the deterministic ids.

use serde::{Deserialize, Serialize};
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

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A SHA-256 computed piece by piece, for bytes that never sit in memory whole. Its state can be
/// saved between pieces (it is a few dozen bytes), so a download cut into several invocations
/// is still checked as one: the compression function is `sha2`'s, only the padding is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamingSha256 {
    state: [u32; 8],
    /// Bytes given so far.
    length: u64,
    /// The bytes after the last whole 64-byte block.
    pending: Vec<u8>,
}

impl Default for StreamingSha256 {
    fn default() -> Self {
        StreamingSha256 {
            state: INITIAL_STATE,
            length: 0,
            pending: Vec::new(),
        }
    }
}

impl StreamingSha256 {
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.compress(&block);
        }
        let mut blocks = bytes.chunks_exact(64);
        for block in &mut blocks {
            self.compress(block);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn compress(&mut self, block: &[u8]) {
        let block = sha2::digest::generic_array::GenericArray::from_slice(block);
        sha2::compress256(&mut self.state, std::slice::from_ref(block));
    }

    /// Lowercase hex of the digest of everything given so far.
    pub fn finish_hex(mut self) -> String {
        let bits = self.length.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        for block in tail.chunks_exact(64) {
            self.compress(block);
        }
        let bytes: Vec<u8> = self.state.iter().flat_map(|w| w.to_be_bytes()).collect();
        hex::encode(bytes)
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
    fn a_digest_saved_and_resumed_mid_stream_equals_sha2s() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 256) as u8).collect();
        for len in [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000] {
            for split in [0, 1, 63, 64, 65, len / 2, len] {
                let split = split.min(len);
                let mut first = StreamingSha256::default();
                first.update(&data[..split]);
                let saved = serde_json::to_string(&first).unwrap();
                let mut resumed: StreamingSha256 = serde_json::from_str(&saved).unwrap();
                resumed.update(&data[split..len]);
                assert_eq!(
                    resumed.finish_hex(),
                    sha256_hex(&data[..len]),
                    "{len} bytes split at {split}"
                );
            }
        }
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
