//! Encrypted content I/O on one backing file.
//!
//! This layer turns plaintext reads, writes and truncates into block
//! operations on the ciphertext file (format in [`crate::format`]). It knows
//! nothing about FUSE, paths or key providers: it is handed a backing
//! [`std::fs::File`] and the VM's unwrapped keys.
//!
//! * [`range_lock`]: shared/exclusive locks on block ranges.
//! * [`allocation`]: SEEK_DATA/SEEK_HOLE, fallocate, hole punching.
//! * [`parallel`]: the block crypto of large requests on every core.
//! * [`prefetch`]: starting the reads of backing pages a store covers in
//!   part, so writers do not wait on them one by one, or of a window.
//! * [`read_around`]: whether a read that misses the backing page cache
//!   brings in the window around it, fixed or learned per file.
//! * [`read_ahead`]: starting the backing reads ahead of a file read from
//!   start to end.
//! * [`sealed_region`]: the stored form of a run of blocks in either
//!   content format, and its backing I/O.
//! * [`transcode`]: whole-file conversion between plain and encrypted forms.
//! * [`xattr_value`]: sealing and opening extended attribute values.
//! * [`verify`]: checking every block of a stored file (`vmcryptfs fsck`).
//! * [`encrypted_file`]: the per-inode state and the read/write/truncate
//!   algorithms, with their locking rules.

pub mod allocation;
pub mod encrypted_file;
pub mod parallel;
pub mod prefetch;
pub mod range_lock;
pub mod read_ahead;
pub mod read_around;
mod sealed_region;
pub mod transcode;
pub mod verify;
pub mod xattr_value;

pub use allocation::SeekTarget;
pub use encrypted_file::{ContentError, EncryptedFile};
