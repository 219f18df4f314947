//! vmcryptfs: a FUSE filesystem that presents encrypted VM homes as plain
//! files, following vSphere VM Encryption.
//!
//! The modules read as the architecture, bottom to top:
//!
//! * [`crypto`]: AEADs, HKDF, secret key types. Knows nothing of files.
//! * [`format`]: the on-disk formats (file header, key bundle) and the pure
//!   offset arithmetic between plaintext and ciphertext. See docs/FORMAT.md.
//! * [`keys`]: key providers (the embedded sled store; KMIP later) behind
//!   one trait.
//! * [`content`]: block-level encrypted I/O on one backing file, with the
//!   range locks that let writers of different blocks run in parallel.
//! * [`datastore`]: VM homes, their bundles and policies, the per-mount key
//!   cache and shallow re-key.
//! * [`control`]: the `.control` command language and status rendering.
//! * [`frontend`]: the thin FUSE layer that translates kernel requests.
//! * [`cli`]: the command-line interface.

// One audited exception: `crypto::block_aead` calls AWS-LC's AEAD through
// its C interface (`aws-lc-sys`), because the safe wrappers take only
// 96-bit nonces; each `unsafe` there states why it holds. Nothing else may
// use `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod content;
pub mod control;
pub mod crypto;
pub mod datastore;
pub mod format;
pub mod frontend;
pub mod keys;
