//! What the block devices under a datastore do by themselves, as sysfs
//! shows it: for now, how far their readahead reads ahead of a sequential
//! reader (which decides `content::read_ahead`'s default, per file).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes the readahead of the device holding `path` reads ahead, or None
/// when it cannot be found (no such path, a file system without a block
/// device of its own such as tmpfs or overlayfs, or no sysfs).
pub fn readahead_bytes(path: &Path) -> Option<u64> {
    readahead_of_device(std::fs::metadata(path).ok()?.dev())
}

/// [`readahead_bytes`] of the device `dev` (an `st_dev`).
fn readahead_of_device(dev: u64) -> Option<u64> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    readahead_knobs(major, minor)
        .into_iter()
        .find_map(|knob| std::fs::read_to_string(knob).ok())
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The readahead of each device that backing files live on, read from
/// sysfs the first time a file on it is asked about. A datastore's VM
/// homes may be mounts of their own, on devices that read ahead
/// differently.
#[derive(Debug, Default)]
pub struct DeviceReadahead {
    /// By `st_dev`; held only for one lookup (a few small sysfs reads,
    /// once per device).
    known: Mutex<HashMap<u64, Option<u64>>>,
}

impl DeviceReadahead {
    /// [`readahead_bytes`] of the device holding `file`.
    pub fn of_file(&self, file: &File) -> Option<u64> {
        let dev = file.metadata().ok()?.dev();
        let mut known = self.known.lock().expect("device readahead lock poisoned");
        *known.entry(dev).or_insert_with(|| readahead_of_device(dev))
    }
}

/// Where sysfs keeps the readahead of device `major:minor`, most specific
/// first: a whole disk's request queue; for a partition, its disk's
/// (partitions have no queue of their own); and the backing-device-info
/// entry, which also exists for devices without a queue (device mapper
/// targets list theirs under the first).
fn readahead_knobs(major: u32, minor: u32) -> [PathBuf; 3] {
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
            rustix::fs::major(dev),
            rustix::fs::minor(dev)
        );
        // Where the kernel lists the device as a backing device, its
        // readahead is what was found (through whichever knob).
        if let Ok(kib) = std::fs::read_to_string(bdi) {
            let expected = kib.trim().parse::<u64>().unwrap() * 1024;
            assert_eq!(readahead_bytes(dir.path()), Some(expected));
        }
        assert_eq!(readahead_bytes(Path::new("/nonexistent/vmcryptfs")), None);
        // A file there is on the same device.
        let file = File::create(dir.path().join("f")).unwrap();
        assert_eq!(
            DeviceReadahead::default().of_file(&file),
            readahead_bytes(dir.path())
        );
    }
}
