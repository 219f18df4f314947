//! On-disk formats, as specified in docs/FORMAT.md.
//!
//! Pure encode/parse and arithmetic only: no I/O, no key providers. Every
//! parser rejects anything it does not fully understand and names the field.
//!
//! * [`offsets`]: plaintext ↔ ciphertext offsets and sizes.
//! * [`file_header`]: the 44-byte header of an encrypted file.
//! * [`bundle`]: the per-VM key bundle.

pub mod bundle;
pub mod file_header;
pub mod offsets;
