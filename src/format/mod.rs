//! On-disk formats, as specified in docs/FORMAT.md.
//!
//! Pure encode/parse and arithmetic only: no I/O, no key providers. Every
//! parser rejects anything it does not fully understand and names the field.
//!
//! * [`offsets`]: plaintext offsets and blocks, and format 1's stored offsets.
//! * [`content_layout`]: where blocks are stored in content formats 1 and 2.
//! * [`file_header`]: the 44-byte header of an encrypted file.
//! * [`bundle`]: the per-VM key bundle.
//! * [`disk_pattern`]: which file names in a VM home are disks.
//! * [`untrusted`]: showing names and fields read from the datastore,
//!   escaped and bounded.
//! * [`xattr`]: extended attribute namespaces and the sealed value layout.

pub mod bundle;
pub mod content_layout;
pub mod disk_pattern;
pub mod file_header;
pub mod kek_ref;
pub mod offsets;
pub mod untrusted;
pub mod xattr;
