//! Reading /proc/self/mountinfo: is a path a mount point, and where is a
//! datastore mounted.

use std::path::{Path, PathBuf};

/// The `fsname` vmcryptfs gives a mount of `datastore` (the mount source
/// shown by mount(8) and in mountinfo).
pub fn fsname_for(datastore: &Path) -> String {
    format!("vmcryptfs:{}", datastore.display())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of /proc/self/mountinfo, the fields we use.
struct Mount {
    /// `major:minor` of the mounted filesystem.
    device: String,
    mount_point: PathBuf,
    fstype: String,
    source: String,
}

/// Every mount, oldest first (mountinfo's order).
fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let device = left.nth(2)?.to_string();
            let mount_point = unescape(left.nth(1)?);
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let source = unescape(right.next()?);
            Some(Mount {
                device,
                mount_point: PathBuf::from(mount_point),
                fstype,
                source,
            })
        })
        .collect()
}

/// Whether `path` is currently a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.mount_point == path)
}

/// The device (`major:minor`, as in /sys/class/bdi) of the filesystem
/// mounted at `mount_point` (canonical) with mount source `source`; the
/// newest, if several are stacked there. Read from mountinfo, so it needs
/// no request to the filesystem (which may not be serving yet).
pub fn device_of(mount_point: &Path, source: &str) -> Option<String> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mount_point && m.source == source)
        .map(|m| m.device)
}

/// Where `datastore` (absolute) is mounted by vmcryptfs, if it is. The
/// mount source is our fsname; the type is `fuse` or `fuse.vmcryptfs`
/// depending on how fusermount3 was asked.
pub fn vmcryptfs_mount_of(datastore: &Path) -> Option<PathBuf> {
    let source = fsname_for(datastore);
    mounts()
        .into_iter()
        .find(|m| m.fstype.starts_with("fuse") && m.source == source)
        .map(|m| m.mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_spaces_and_backslashes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")));
    }

    #[test]
    fn the_device_of_proc_is_the_one_stat_reports() {
        use std::os::unix::fs::MetadataExt;
        let proc = mounts()
            .into_iter()
            .rev()
            .find(|m| m.mount_point == Path::new("/proc"))
            .expect("/proc is mounted");
        let dev = std::fs::metadata("/proc").unwrap().dev();
        let expected = format!("{}:{}", libc::major(dev), libc::minor(dev));
        assert_eq!(device_of(Path::new("/proc"), &proc.source), Some(expected));
        assert_eq!(device_of(Path::new("/proc"), "no such source"), None);
    }
}
