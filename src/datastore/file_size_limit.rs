//! The largest file the datastore's file system holds (its `s_maxbytes`:
//! 16 TiB on ext4 with 4 KiB blocks, 8 EiB on XFS), found once per mount.
//!
//! Why: a FUSE caller may ask for any size up to 8 EiB. A size the backing
//! file system refuses must fail with EFBIG *before* an extending write or
//! truncate has changed anything (padded the old last block, or stored part
//! of a write, which in content format 1 leaves a trailing fragment), and
//! at once, not after work in proportion to the size. Knowing the limit
//! turns that into one comparison per extension, with no syscall on the hot
//! path and no change to the order of writes that crash safety relies on.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};

/// What is assumed when the limit cannot be probed: the largest offset
/// Linux represents. Backing writes past the real limit then fail as the
/// backing file system says, after any padding (as before this check).
pub const UNKNOWN_LIMIT: u64 = i64::MAX as u64;

/// The largest size, in bytes, that the file system holding directory
/// `dir` accepts for a file: a binary search with `ftruncate` on an unnamed
/// temporary file (`O_TMPFILE`, so nothing appears in the datastore and no
/// name can be planted in its way). The sizes are sparse: nothing is
/// allocated, and 63 truncations take well under a millisecond on ext4.
///
/// Errors if the file system has no `O_TMPFILE` (NFS, for one) or a
/// truncation fails otherwise than with EFBIG.
pub fn probe(dir: impl AsFd) -> io::Result<u64> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    largest_accepted(|len| match rustix::fs::ftruncate(&fd, len) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::FBIG) => Ok(false),
        Err(e) => Err(e.into()),
    })
}

/// The largest `len` in `0..=UNKNOWN_LIMIT` that `accepts`, given that the
/// answers are monotone (every size up to the limit is accepted, none
/// after) and 0 is accepted.
fn largest_accepted(mut accepts: impl FnMut(u64) -> io::Result<bool>) -> io::Result<u64> {
    let (mut accepted, mut refused) = (0u64, UNKNOWN_LIMIT + 1);
    while refused - accepted > 1 {
        let mid = accepted + (refused - accepted) / 2;
        if accepts(mid)? {
            accepted = mid;
        } else {
            refused = mid;
        }
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_search_finds_every_limit_exactly() {
        let limits = [
            0,
            1,
            2,
            4095,
            4096,
            (16 << 40) - 4096,
            UNKNOWN_LIMIT - 1,
            UNKNOWN_LIMIT,
        ];
        for limit in limits {
            let mut calls = 0;
            let found = largest_accepted(|len| {
                calls += 1;
                Ok(len <= limit)
            })
            .unwrap();
            assert_eq!(found, limit);
            assert!(calls <= 63, "{calls} probes for {limit}");
        }
        let err = largest_accepted(|_| Err(io::Error::from_raw_os_error(libc::EIO)));
        assert!(err.is_err());
    }

    /// The file system the build directory lives on (ext4 or XFS on the
    /// machines this runs on; both have O_TMPFILE) holds at least 1 TiB
    /// and reports a limit that truncation really stops at.
    #[test]
    fn probes_the_build_directory_file_system() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let limit = probe(std::fs::File::open(dir.path()).unwrap()).unwrap();
        assert!(limit >= 1 << 40, "limit {limit}");
        let file = tempfile::tempfile_in(dir.path()).unwrap();
        file.set_len(limit).unwrap();
        if limit < UNKNOWN_LIMIT {
            let err = file.set_len(limit + 1).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
        }
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing left behind"
        );
    }
}
