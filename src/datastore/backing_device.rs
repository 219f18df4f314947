//! What the block device under a datastore does by itself, as sysfs shows
//! it: for now, how far its readahead reads ahead of a sequential reader
//! (which decides `content::read_ahead`'s default).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Bytes the readahead of the device holding `path` reads ahead, or None
/// when it cannot be found (no such path, a file system without a block
/// device of its own such as tmpfs or overlayfs, or no sysfs).
pub fn readahead_bytes(path: &Path) -> Option<u64> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    readahead_knobs(major, minor)
        .into_iter()
        .find_map(|knob| std::fs::read_to_string(knob).ok())
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Where sysfs keeps the readahead of device `major:minor`, most specific
/// first: a whole disk's request queue; for a partition, its disk's
/// (partitions have no queue of their own); and the backing-device-info
/// entry, which also exists for devices without a queue (device mapper
/// targets list theirs under the first).
fn readahead_knobs(major: u64, minor: u64) -> [PathBuf; 3] {
    let device = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    [
        device.join("queue/read_ahead_kb"),
        device.join("../queue/read_ahead_kb"),
        PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_cover_disks_partitions_and_other_backing_devices() {
        let [disk, partition, bdi] = readahead_knobs(259, 3);
        assert_eq!(disk, Path::new("/sys/dev/block/259:3/queue/read_ahead_kb"));
        assert_eq!(
            partition,
            Path::new("/sys/dev/block/259:3/../queue/read_ahead_kb")
        );
        assert_eq!(bdi, Path::new("/sys/class/bdi/259:3/read_ahead_kb"));
    }

    #[test]
    fn the_device_of_a_real_directory_matches_its_sysfs_entry() {
        let dir = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        let bdi = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        );
        // Where the kernel lists the device as a backing device, its
        // readahead is what was found (through whichever knob).
        if let Ok(kib) = std::fs::read_to_string(bdi) {
            let expected = kib.trim().parse::<u64>().unwrap() * 1024;
            assert_eq!(readahead_bytes(dir.path()), Some(expected));
        }
        assert_eq!(readahead_bytes(Path::new("/nonexistent/vmcryptfs")), None);
    }
}
