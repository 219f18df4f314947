//! AES-256-GCM with 128-bit nonces, for file content blocks.
//!
//! Why 128-bit nonces: every block write draws a fresh random nonce, and a
//! VM disk is rewritten many times over its life. With 96-bit nonces a 2 TiB
//! disk rewritten 100 times (≈2^35.6 encryptions under one file key) reaches a
//! collision probability of ≈2^-25.7; with 128-bit nonces the bound falls to
//! ≈2^-47 (derivation in docs/FORMAT.md). GCM accepts any nonce length; a
//! 128-bit nonce is hashed with GHASH into the initial counter block, which
//! costs one extra GHASH block per 4 KiB block.

use std::sync::Mutex;

use openssl::cipher::Cipher;
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};

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
/// Why OpenSSL and not the `aes-gcm` crate: this is the hot path of every
/// read and write, and OpenSSL's stitched AES-GCM (AES-NI/VAES with
/// PCLMULQDQ in one pass) seals a 4 KiB block with a 128-bit nonce at
/// 3.5 GB/s on one core here against 2.0 GB/s for aes-gcm 0.11
/// (docs/PERFORMANCE.md). The bytes are the same standard AES-256-GCM;
/// the unit tests below check every length against the RustCrypto
/// implementation in both directions, which stays the reference (and the
/// key wrapper's AEAD, off the hot path).
///
/// An OpenSSL cipher context is mutable state, so it cannot be shared
/// between threads; each direction keeps a pool of contexts that already
/// hold the expanded key, and an operation borrows one. The pool grows to
/// the number of threads that seal or open at once (FUSE threads plus the
/// crypto pool), and a new context is a copy of the keyed template, so the
/// key schedule is computed once per file key. OpenSSL clears a GCM
/// context's key material when it is freed.
pub struct BlockAead {
    /// Keyed for encryption. Lock: held only to take or return a context.
    sealers: ContextPool,
    /// Keyed for decryption. Lock: as `sealers`.
    openers: ContextPool,
}

/// Contexts keyed for one direction, each used by one thread at a time.
struct ContextPool {
    /// Keyed, with the nonce length set; never used for an operation, only
    /// copied when the pool runs dry. Lock: its mutex, taken only then.
    template: Mutex<MovableContext>,
    /// Contexts not in use. Lock: the mutex, held only to push or pop.
    idle: Mutex<Vec<MovableContext>>,
}

/// A cipher context that may move to another thread.
struct MovableContext(CipherCtx);

// SAFETY: an EVP_CIPHER_CTX has no thread affinity: OpenSSL allows using it
// from any thread as long as no two threads use it at once. Every
// `MovableContext` lives behind a mutex or is owned by the one thread that
// took it from there, so it is never used concurrently. (The openssl crate
// declares neither Send nor Sync for `CipherCtx`; Send is all we claim.)
#[allow(unsafe_code)]
unsafe impl Send for MovableContext {}

#[derive(Clone, Copy)]
enum Direction {
    Seal,
    Open,
}

impl ContextPool {
    fn new(key: &DerivedKey, direction: Direction) -> Self {
        let cipher = Cipher::aes_256_gcm();
        let mut template = CipherCtx::new().expect(OPENSSL_ALLOCATION);
        match direction {
            Direction::Seal => template.encrypt_init(Some(cipher), Some(key.expose()), None),
            Direction::Open => template.decrypt_init(Some(cipher), Some(key.expose()), None),
        }
        .expect("AES-256-GCM with a 32-byte key is always available");
        template
            .set_iv_length(NONCE_LEN)
            .expect("GCM accepts 128-bit nonces");
        Self {
            template: Mutex::new(MovableContext(template)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `operation` on a context of this pool, then returns the context.
    fn with_context<R>(&self, operation: impl FnOnce(&mut CipherCtxRef) -> R) -> R {
        let taken = lock(&self.idle).pop();
        let mut context = taken.unwrap_or_else(|| {
            let mut context = CipherCtx::new().expect(OPENSSL_ALLOCATION);
            context
                .copy(&lock(&self.template).0)
                .expect(OPENSSL_ALLOCATION);
            MovableContext(context)
        });
        let result = operation(&mut context.0);
        lock(&self.idle).push(context);
        result
    }
}

/// A context is whole even if a thread panicked while holding the lock:
/// every operation starts by setting a new nonce.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// OpenSSL's cipher calls on a keyed GCM context fail only when memory
/// runs out, where there is nothing better to do than stop.
const OPENSSL_ALLOCATION: &str = "OpenSSL could not allocate a cipher context";

impl BlockAead {
    /// Builds the cipher for one derived key.
    pub fn new(key: &DerivedKey) -> Self {
        Self {
            sealers: ContextPool::new(key, Direction::Seal),
            openers: ContextPool::new(key, Direction::Open),
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
        self.sealers.with_context(|context| {
            context
                .encrypt_init(None, None, Some(nonce))
                .expect(OPENSSL_ALLOCATION);
            context.cipher_update(aad, None).expect(OPENSSL_ALLOCATION);
            let written = context
                .cipher_update(plaintext, Some(ciphertext))
                .expect(OPENSSL_ALLOCATION);
            debug_assert_eq!(written, plaintext.len(), "GCM is a stream mode");
            context.cipher_final(&mut []).expect(OPENSSL_ALLOCATION);
            context.tag(tag_out).expect(OPENSSL_ALLOCATION);
        });
    }

    /// Opens `nonce || ciphertext || tag` into `plaintext`, which must be
    /// exactly `sealed.len() - OVERHEAD` bytes. On failure `plaintext` is
    /// zeroed: unauthenticated plaintext is never handed out, not even
    /// partially (OpenSSL decrypts before it checks the tag).
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
        let verified = self.openers.with_context(|context| {
            context
                .decrypt_init(None, None, Some(nonce))
                .expect(OPENSSL_ALLOCATION);
            context.set_tag(tag).expect(OPENSSL_ALLOCATION);
            context.cipher_update(aad, None).expect(OPENSSL_ALLOCATION);
            context
                .cipher_update(ciphertext, Some(&mut *plaintext))
                .expect(OPENSSL_ALLOCATION);
            // The only failure of the final step of a GCM decryption is a
            // tag that does not verify.
            context.cipher_final(&mut []).is_ok()
        });
        if !verified {
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
    /// OpenSSL path must match byte for byte, in both directions.
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
    fn threads_sharing_one_cipher_get_their_own_contexts() {
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
