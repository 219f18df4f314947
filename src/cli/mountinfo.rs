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

/// (mount point, fs type, source) of every mount.
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let mut right = right.split(' ');
            let fstype = right.next()?.to_string();
            let source = unescape(right.next()?);
            Some((PathBuf::from(mount_point), fstype, source))
        })
        .collect()
}

/// Whether `path` is currently a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|(mp, _, _)| mp == path)
}

/// Where `datastore` (absolute) is mounted by vmcryptfs, if it is. The
/// mount source is our fsname; the type is `fuse` or `fuse.vmcryptfs`
/// depending on how fusermount3 was asked.
pub fn vmcryptfs_mount_of(datastore: &Path) -> Option<PathBuf> {
    let source = fsname_for(datastore);
    mounts()
        .into_iter()
        .find(|(_, fstype, src)| fstype.starts_with("fuse") && *src == source)
        .map(|(mp, _, _)| mp)
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
}
