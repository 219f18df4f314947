//! Wrapping one 32-byte key under another: AES-256-GCM, 96-bit random nonce.
//!
//! Used for a DEK under a KEK (embedded provider) and for a KEK under the
//! master key (embedded key store). Wraps are rare (one per re-key), so a
//! random 96-bit nonce is far from its collision bound. The wrapped form is
//! `nonce (12) || ciphertext (32) || tag (16)` = 60 bytes.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use super::secret::KEY_LEN;

/// Nonce length of a wrap.
pub const WRAP_NONCE_LEN: usize = 12;
/// Length of a wrapped 32-byte key.
pub const WRAPPED_KEY_LEN: usize = WRAP_NONCE_LEN + KEY_LEN + 16;

/// The wrapped key did not open: wrong wrapping key, wrong AAD, or tampering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key unwrap failed (wrong key, or the wrapped key or its context was modified)")]
pub struct UnwrapFailed;

/// Wraps `key` under `wrapping_key`, binding `aad`.
pub fn wrap(wrapping_key: &[u8; KEY_LEN], key: &[u8; KEY_LEN], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(&Array::from(*wrapping_key));
    let nonce: [u8; WRAP_NONCE_LEN] = super::random::array();
    let mut buf = Zeroizing::new(*key);
    let tag = cipher
        .encrypt_inout_detached(&Array::from(nonce), aad, buf.as_mut_slice().into())
        .expect("32 bytes is within GCM limits");
    let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(buf.as_ref());
    out.extend_from_slice(&tag);
    out
}

/// Opens a wrapped key produced by [`wrap`].
pub fn unwrap(
    wrapping_key: &[u8; KEY_LEN],
    wrapped: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, UnwrapFailed> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(UnwrapFailed);
    }
    let cipher = Aes256Gcm::new(&Array::from(*wrapping_key));
    let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(KEY_LEN);
    let nonce: [u8; WRAP_NONCE_LEN] = nonce.try_into().expect("split at WRAP_NONCE_LEN");
    let tag: [u8; 16] = tag.try_into().expect("16-byte tag");
    let mut buf = Zeroizing::new([0u8; KEY_LEN]);
    buf.copy_from_slice(ciphertext);
    cipher
        .decrypt_inout_detached(
            &Array::from(nonce),
            aad,
            buf.as_mut_slice().into(),
            &Array::from(tag),
        )
        .map_err(|_| UnwrapFailed)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_tamper() {
        let kek = [1u8; 32];
        let dek = [2u8; 32];
        let wrapped = wrap(&kek, &dek, b"ctx");
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        assert_eq!(*unwrap(&kek, &wrapped, b"ctx").unwrap(), dek);
        assert!(unwrap(&[3u8; 32], &wrapped, b"ctx").is_err());
        assert!(unwrap(&kek, &wrapped, b"other").is_err());
        for i in 0..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x80;
            assert!(unwrap(&kek, &bad, b"ctx").is_err(), "byte {i}");
        }
        assert!(unwrap(&kek, &wrapped[1..], b"ctx").is_err());
    }

    #[test]
    fn wrapping_twice_gives_different_ciphertexts() {
        assert_ne!(wrap(&[1; 32], &[2; 32], b""), wrap(&[1; 32], &[2; 32], b""));
    }
}
