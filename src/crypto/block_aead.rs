//! AES-256-GCM with 128-bit nonces, for file content blocks.
//!
//! Why 128-bit nonces: every block write draws a fresh random nonce, and a
//! VM disk is rewritten many times over its life. With 96-bit nonces a 2 TiB
//! disk rewritten 100 times (≈2^35.6 encryptions under one file key) reaches a
//! collision probability of ≈2^-25.7; with 128-bit nonces the bound falls to
//! ≈2^-47 (derivation in docs/FORMAT.md). GCM accepts any nonce length; a
//! 128-bit nonce is hashed with GHASH into the initial counter block, which
//! costs one extra GHASH block per 4 KiB block.

use std::ptr::NonNull;

use aws_lc_sys::{
    ERR_clear_error, EVP_AEAD_CTX_free, EVP_AEAD_CTX_new, EVP_AEAD_CTX_open_gather,
    EVP_AEAD_CTX_seal_scatter, EVP_aead_aes_256_gcm, EVP_AEAD_CTX,
};

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

/// One file's content cipher. Cheap to share behind an `Arc`.
///
/// Why AWS-LC, called through `aws-lc-sys`: this is the hot path of every
/// read and write. AWS-LC's AES-GCM uses VAES and VPCLMULQDQ on the CPUs
/// that have them and seals a 4 KiB block with a 128-bit nonce at about
/// 8 GB/s on one core here, against 3.4 GB/s for OpenSSL 3.0 and 2.1 GB/s
/// for the RustCrypto `aes-gcm` 0.11 (docs/PERFORMANCE.md, "Block cipher:
/// AWS-LC"; `cargo bench --bench block_codec`). The safe wrappers
/// (`aws-lc-rs`, `ring`) accept only 96-bit nonces, and the content formats
/// store 128-bit ones, so this module binds the C interface itself. The bytes
/// are the same standard AES-256-GCM; the unit tests below check every
/// length against the RustCrypto implementation in both directions, which
/// stays the reference (and the key wrapper's AEAD, off the hot path).
pub struct BlockAead {
    /// The keyed AES-256-GCM context (expanded key and GHASH table).
    /// Lock: none. It is never modified after `new`, and AWS-LC documents
    /// that seal and open may run concurrently on one context.
    context: NonNull<EVP_AEAD_CTX>,
}

// SAFETY: the context is owned by this value alone and freed only in
// `drop`. Between `new` and `drop` it is only passed as a `*const` to
// `EVP_AEAD_CTX_seal_scatter` and `EVP_AEAD_CTX_open_gather`, which
// AWS-LC's aead.h documents as safe to call concurrently "with itself or
// any other seal/open function on the same EVP_AEAD_CTX"; nothing in it
// is tied to the thread that created it.
#[allow(unsafe_code)]
unsafe impl Send for BlockAead {}
#[allow(unsafe_code)]
unsafe impl Sync for BlockAead {}

impl Drop for BlockAead {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the pointer came from `EVP_AEAD_CTX_new`, is freed once,
        // and no borrow of `self` outlives this call. AWS-LC's free
        // overwrites the allocation (key schedule included) with zeros.
        unsafe { EVP_AEAD_CTX_free(self.context.as_ptr()) }
    }
}

impl BlockAead {
    /// Builds the cipher for one derived key.
    #[allow(unsafe_code)]
    pub fn new(key: &DerivedKey) -> Self {
        let key = key.expose();
        // SAFETY: `EVP_aead_aes_256_gcm` returns a static descriptor; the
        // key pointer and length describe a live 32-byte array, which
        // AWS-LC copies into the context (expanded) before returning.
        let context =
            unsafe { EVP_AEAD_CTX_new(EVP_aead_aes_256_gcm(), key.as_ptr(), key.len(), TAG_LEN) };
        Self {
            // A 32-byte key is always valid for AES-256-GCM, so the only
            // failure is an allocation failure, where there is nothing
            // better to do than stop.
            context: NonNull::new(context).expect("AWS-LC could not allocate an AEAD context"),
        }
    }

    /// Writes `nonce || ciphertext || tag` for `plaintext` into `sealed`,
    /// which must be exactly `plaintext.len() + OVERHEAD` bytes (content
    /// format 1 stores blocks this way). Encrypts straight from `plaintext`
    /// into `sealed`: no staging copy, and the caller can reuse `sealed`
    /// without zeroing it first.
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
        let tag_out: &mut [u8; TAG_LEN] = tag_out.try_into().expect("TAG_LEN bytes");
        self.seal_detached(nonce, aad, plaintext, ciphertext, tag_out);
    }

    /// Encrypts `plaintext` into `ciphertext` (same length) and writes the
    /// tag to `tag_out`; the caller stores the nonce and tag wherever its
    /// format keeps them (content format 2 keeps them apart from the data).
    pub fn seal_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        ciphertext: &mut [u8],
        tag_out: &mut [u8; TAG_LEN],
    ) {
        assert_eq!(ciphertext.len(), plaintext.len(), "ciphertext length");
        let mut tag_len = 0;
        // SAFETY: every pointer and length pair describes a live slice
        // (`ciphertext` is writable and as long as `plaintext`, `tag_out`
        // is writable for `TAG_LEN` bytes); the borrow rules keep the
        // output apart from the inputs, which AWS-LC requires. There is no
        // `extra_in`.
        #[allow(unsafe_code)]
        let sealed = unsafe {
            EVP_AEAD_CTX_seal_scatter(
                self.context.as_ptr(),
                ciphertext.as_mut_ptr(),
                tag_out.as_mut_ptr(),
                &mut tag_len,
                TAG_LEN,
                nonce.as_ptr(),
                NONCE_LEN,
                plaintext.as_ptr(),
                plaintext.len(),
                std::ptr::null(),
                0,
                aad.as_ptr(),
                aad.len(),
            )
        };
        // It fails only for arguments this function never passes: a
        // zero-length nonce, a short tag buffer, or more than 2^36 bytes
        // (GCM's limit; blocks are 4 KiB).
        assert!(sealed == 1 && tag_len == TAG_LEN, "AES-GCM seal failed");
    }

    /// Opens `nonce || ciphertext || tag` into `plaintext`, which must be
    /// exactly `sealed.len() - OVERHEAD` bytes. On failure `plaintext` is
    /// zeroed: unauthenticated plaintext is never handed out, not even
    /// partially (AWS-LC decrypts before it checks the tag).
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
        self.open_detached(aad, nonce, ciphertext, tag, plaintext)
    }

    /// Opens a block whose nonce and tag are stored apart from its
    /// ciphertext into `plaintext` (same length as `ciphertext`), with the
    /// same guarantee as [`BlockAead::open_into`]: on failure `plaintext` is
    /// zeroed.
    pub fn open_detached(
        &self,
        aad: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        plaintext: &mut [u8],
    ) -> Result<(), AuthenticationFailed> {
        if nonce.len() != NONCE_LEN || tag.len() != TAG_LEN || plaintext.len() != ciphertext.len() {
            return Err(AuthenticationFailed);
        }
        // SAFETY: every pointer and length pair describes a live slice
        // (`plaintext` is writable and as long as `ciphertext`); the
        // borrow rules keep the output apart from the inputs.
        #[allow(unsafe_code)]
        let verified = unsafe {
            EVP_AEAD_CTX_open_gather(
                self.context.as_ptr(),
                plaintext.as_mut_ptr(),
                nonce.as_ptr(),
                NONCE_LEN,
                ciphertext.as_ptr(),
                ciphertext.len(),
                tag.as_ptr(),
                TAG_LEN,
                aad.as_ptr(),
                aad.len(),
            )
        } == 1;
        if !verified {
            // AWS-LC decrypts before it compares tags, and it records the
            // failure in this thread's error queue; neither may linger.
            plaintext.fill(0);
            // SAFETY: clears this thread's AWS-LC error queue; no arguments.
            #[allow(unsafe_code)]
            unsafe {
                ERR_clear_error()
            };
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
    use aes_gcm::aead::array::Array;
    use aes_gcm::aead::consts::U16;
    use aes_gcm::aead::inout::InOutBuf;
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::aes::Aes256;
    use aes_gcm::AesGcm;

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

    /// The RustCrypto AES-256-GCM with a 128-bit nonce: the reference the
    /// AWS-LC path must match byte for byte, in both directions.
    fn reference() -> AesGcm<Aes256, U16> {
        AesGcm::new(&Array::from([5; 32]))
    }

    #[test]
    fn matches_the_reference_implementation_byte_for_byte() {
        let a = aead();
        let reference = reference();
        for (round, len) in [0usize, 1, 15, 16, 17, 31, 100, 4095, 4096, 65536]
            .into_iter()
            .enumerate()
        {
            let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| (i * 7 + round) as u8);
            let aad: Vec<u8> = (0..round * 5).map(|i| i as u8 ^ 0x33).collect();
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 + round) as u8).collect();

            let mut sealed = vec![0xAA; len + OVERHEAD];
            a.seal_into(&nonce, &aad, &plain, &mut sealed);
            let mut expected_ciphertext = plain.clone();
            let expected_tag = reference
                .encrypt_inout_detached(
                    &Array::from(nonce),
                    &aad,
                    InOutBuf::from(&mut expected_ciphertext[..]),
                )
                .unwrap();
            assert_eq!(&sealed[..NONCE_LEN], &nonce);
            assert_eq!(
                &sealed[NONCE_LEN..NONCE_LEN + len],
                &expected_ciphertext[..]
            );
            assert_eq!(&sealed[NONCE_LEN + len..], &expected_tag[..]);

            // What the reference seals, this opens, and the reverse.
            let mut opened = vec![0xEE; len];
            a.open_into(&aad, &sealed, &mut opened).unwrap();
            assert_eq!(opened, plain);
            let mut by_reference = sealed[NONCE_LEN..NONCE_LEN + len].to_vec();
            reference
                .decrypt_inout_detached(
                    &Array::from(nonce),
                    &aad,
                    InOutBuf::from(&mut by_reference[..]),
                    &expected_tag,
                )
                .unwrap();
            assert_eq!(by_reference, plain);
        }
    }

    #[test]
    fn threads_share_one_cipher() {
        let a = std::sync::Arc::new(aead());
        let workers: Vec<_> = (0..8u8)
            .map(|worker| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..200u8 {
                        let plain = vec![worker ^ i; 4096];
                        let mut sealed = vec![0; 4096 + OVERHEAD];
                        a.seal_into(&[worker; NONCE_LEN], &[i], &plain, &mut sealed);
                        let mut opened = vec![0; 4096];
                        a.open_into(&[i], &sealed, &mut opened).unwrap();
                        assert_eq!(opened, plain);
                        sealed[NONCE_LEN] ^= 1;
                        assert!(a.open_into(&[i], &sealed, &mut opened).is_err());
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
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
