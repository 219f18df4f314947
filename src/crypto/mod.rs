//! Cryptographic primitives, and nothing else.
//!
//! This layer knows AEADs, key derivation and secret types. It does not know
//! files, blocks on disk, bundles or providers; those layers call into it.
//!
//! * [`secret`]: key types that zeroize on drop and never print themselves.
//! * [`kdf`]: HKDF-SHA256 derivations (per-file content keys, header MAC keys,
//!   DEK fingerprints), each under its own label.
//! * [`block_aead`]: AES-256-GCM with 128-bit random nonces, used for file
//!   content blocks.
//! * [`key_wrap`]: AES-256-GCM with 96-bit random nonces, used to wrap one
//!   32-byte key under another (DEK under KEK, KEK under master key).
//! * [`keyring`]: a VM's unwrapped DEKs by generation.
//! * [`random`]: the operating system's CSPRNG.

pub mod block_aead;
pub mod kdf;
pub mod key_wrap;
pub mod keyring;
pub mod random;
pub mod secret;
