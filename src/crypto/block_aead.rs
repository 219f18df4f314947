//! AES-256-GCM with 128-bit nonces, for file content blocks.
//!
//! Why 128-bit nonces: every block write draws a fresh random nonce, and a
//! VM disk is rewritten many times over its life. With 96-bit nonces a 2 TiB
//! disk rewritten 100 times (≈2^35.6 encryptions under one file key) reaches a
//! collision probability of ≈2^-25.7; with 128-bit nonces the bound falls to
//! ≈2^-47 (derivation in docs/FORMAT.md). GCM accepts any nonce length; a
//! 128-bit nonce is hashed with GHASH into the initial counter block, which
//! costs one extra GHASH block per 4 KiB block.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::consts::U16;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::AesGcm;

use super::secret::DerivedKey;

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 16;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed block adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The tag did not verify: wrong key, wrong AAD, or modified ciphertext.
/// Deliberately carries no detail, as a failed AEAD open must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthenticationFailed;

/// One file's content cipher. Cheap to share behind an `Arc`; the AES key
/// schedule zeroizes on drop.
pub struct BlockAead {
    cipher: AesGcm<Aes256, U16>,
}

impl BlockAead {
    /// Builds the cipher for one derived key.
    pub fn new(key: &DerivedKey) -> Self {
        Self {
            cipher: AesGcm::new(&Array::from(*key.expose())),
        }
    }

    /// Writes `nonce || ciphertext || tag` for `plaintext` into `sealed`,
    /// which must be exactly `plaintext.len() + OVERHEAD` bytes. Encrypts
    /// straight from `plaintext` into `sealed`: no staging copy, and the
    /// caller can reuse `sealed` without zeroing it first.
    pub fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        sealed: &mut [u8],
    ) {
        assert_eq!(sealed.len(), plaintext.len() + OVERHEAD, "sealed length");
        let (nonce_out, rest) = sealed.split_at_mut(NONCE_LEN);
        let (ciphertext, tag_out) = rest.split_at_mut(plaintext.len());
        nonce_out.copy_from_slice(nonce);
        let buffer = InOutBuf::new(plaintext, ciphertext).expect("equal lengths");
        let tag = self
            .cipher
            .encrypt_inout_detached(&Array::from(*nonce), aad, buffer)
            .expect("a 4 KiB block is far below GCM's plaintext limit");
        tag_out.copy_from_slice(&tag);
    }

    /// Opens `nonce || ciphertext || tag` into `plaintext`, which must be
    /// exactly `sealed.len() - OVERHEAD` bytes. On failure `plaintext` is
    /// zeroed: unauthenticated plaintext is never handed out, not even
    /// partially.
    pub fn open_into(
        &self,
        aad: &[u8],
        sealed: &[u8],
        plaintext: &mut [u8],
    ) -> Result<(), AuthenticationFailed> {
        if sealed.len() < OVERHEAD || plaintext.len() != sealed.len() - OVERHEAD {
            return Err(AuthenticationFailed);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let tag: [u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN");
        let buffer = InOutBuf::new(ciphertext, plaintext).expect("equal lengths");
        let result =
            self.cipher
                .decrypt_inout_detached(&Array::from(nonce), aad, buffer, &Array::from(tag));
        if result.is_err() {
            plaintext.fill(0);
            return Err(AuthenticationFailed);
        }
        Ok(())
    }

    /// [`BlockAead::seal_into`], appending to `out`.
    pub fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.resize(start + plaintext.len() + OVERHEAD, 0);
        self.seal_into(nonce, aad, plaintext, &mut out[start..]);
    }

    /// [`BlockAead::open_into`], appending to `out`. On failure `out` is
    /// left as it was.
    pub fn open_append(
        &self,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AuthenticationFailed> {
        if sealed.len() < OVERHEAD {
            return Err(AuthenticationFailed);
        }
        let start = out.len();
        out.resize(start + sealed.len() - OVERHEAD, 0);
        let result = self.open_into(aad, sealed, &mut out[start..]);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aead() -> BlockAead {
        BlockAead::new(&DerivedKey::from_bytes([5; 32]))
    }

    #[test]
    fn round_trip_various_lengths() {
        let a = aead();
        for len in [0usize, 1, 15, 16, 17, 4095, 4096] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut sealed = Vec::new();
            a.seal_append(&[9; NONCE_LEN], b"aad", &plain, &mut sealed);
            assert_eq!(sealed.len(), len + OVERHEAD);
            let mut out = vec![0xEE];
            a.open_append(b"aad", &sealed, &mut out).unwrap();
            assert_eq!(&out[1..], &plain[..]);
        }
    }

    #[test]
    fn any_bit_flip_or_wrong_aad_fails() {
        let a = aead();
        let mut sealed = Vec::new();
        a.seal_append(&[1; NONCE_LEN], b"aad", b"hello block", &mut sealed);
        for byte in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[byte] ^= 0x01;
            let mut out = Vec::new();
            assert_eq!(
                a.open_append(b"aad", &bad, &mut out),
                Err(AuthenticationFailed)
            );
            assert!(out.is_empty());
        }
        assert!(a.open_append(b"aaD", &sealed, &mut Vec::new()).is_err());
        let mut plain = [0xEE; 11];
        assert!(a.open_into(b"aaD", &sealed, &mut plain).is_err());
        assert_eq!(plain, [0; 11], "a failed open leaves no plaintext behind");
        assert!(a.open_into(b"aad", &sealed, &mut [0; 10]).is_err());
        assert!(a
            .open_append(b"aad", &sealed[..OVERHEAD - 1], &mut Vec::new())
            .is_err());
    }
}
