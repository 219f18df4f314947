//! What each call may do to a virtual file (`.control`, `.control.json`,
//! `.stats`): the pure rule the frontend applies before answering one.
//!
//! Their owner and mode bits ([`StatusAccess`]) are what the kernel checks
//! for callers without privilege; these rules hold for every caller,
//! root included, because the files are computed, not stored:
//! - `.control` takes writes (commands), and a truncation, which
//!   `echo cmd > .control` does first and which changes nothing;
//! - `.control.json` and `.stats` change only by themselves: opening one
//!   for writing, and any attribute change, is EACCES;
//! - none can be hard-linked (EPERM), and none has extended attributes:
//!   reading or removing one is ENODATA, setting one EACCES, and a listing
//!   is empty.
//!
//! [`StatusAccess`]: crate::control::virtual_file::StatusAccess

use fuser::Errno;

use super::file_ops::wants_write;
use super::FsResult;
use crate::control::virtual_file::VirtualFile;

/// A call on a virtual file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualCall {
    /// open(2) with these flags.
    Open {
        /// The open flags (`O_ACCMODE` decides).
        flags: i32,
    },
    /// A write to a handle already open.
    Write,
    /// chmod, chown, truncate or utimens.
    SetAttr,
    /// A hard link to it.
    Link,
    /// getxattr.
    GetXattr,
    /// listxattr: allowed, and empty.
    ListXattr,
    /// setxattr.
    SetXattr,
    /// removexattr.
    RemoveXattr,
}

/// Whether `call` may go on with `file`, or the errno it gets.
pub fn check(file: VirtualFile, call: VirtualCall) -> FsResult<()> {
    let writable = file.writable();
    match call {
        VirtualCall::Open { flags } if wants_write(flags) && !writable => Err(Errno::EACCES),
        VirtualCall::Open { .. } | VirtualCall::ListXattr => Ok(()),
        VirtualCall::Write if !writable => Err(Errno::EBADF),
        VirtualCall::Write => Ok(()),
        VirtualCall::SetAttr if !writable => Err(Errno::EACCES),
        VirtualCall::SetAttr => Ok(()),
        VirtualCall::Link => Err(Errno::EPERM),
        VirtualCall::GetXattr | VirtualCall::RemoveXattr => Err(Errno::ENODATA),
        VirtualCall::SetXattr => Err(Errno::EACCES),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::command::ControlScope;

    /// Every virtual file of every directory.
    fn files() -> Vec<VirtualFile> {
        [ControlScope::Datastore, ControlScope::VmHome]
            .iter()
            .flat_map(|scope| VirtualFile::all_in(*scope).iter().copied())
            .collect()
    }

    /// Every access mode with the flags a shell or an editor adds.
    fn open_flags() -> Vec<i32> {
        let mut all = Vec::new();
        for access in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR] {
            for extra in [
                0,
                libc::O_TRUNC,
                libc::O_APPEND,
                libc::O_CREAT | libc::O_TRUNC,
                libc::O_NONBLOCK,
            ] {
                all.push(access | extra);
            }
        }
        all
    }

    #[test]
    fn every_call_on_every_virtual_file() {
        assert_eq!(files().len(), 5, "{:?}", files());
        for file in files() {
            let control = matches!(file, VirtualFile::Control(_));
            let name = file.name();
            assert_eq!(control, name == ".control", "{file:?}");
            for flags in open_flags() {
                let writes = flags & libc::O_ACCMODE != libc::O_RDONLY;
                let expected = if writes && !control {
                    Err(Errno::EACCES)
                } else {
                    Ok(())
                };
                assert_eq!(
                    check(file, VirtualCall::Open { flags }),
                    expected,
                    "open {name} with {flags:#o}"
                );
            }
            let expected = |ok_for_control: bool, errno| {
                if ok_for_control && control {
                    Ok(())
                } else {
                    Err(errno)
                }
            };
            assert_eq!(
                check(file, VirtualCall::Write),
                expected(true, Errno::EBADF),
                "{name}"
            );
            assert_eq!(
                check(file, VirtualCall::SetAttr),
                expected(true, Errno::EACCES),
                "{name}"
            );
            assert_eq!(check(file, VirtualCall::Link), Err(Errno::EPERM), "{name}");
            assert_eq!(
                check(file, VirtualCall::GetXattr),
                Err(Errno::ENODATA),
                "{name}"
            );
            assert_eq!(
                check(file, VirtualCall::RemoveXattr),
                Err(Errno::ENODATA),
                "{name}"
            );
            assert_eq!(
                check(file, VirtualCall::SetXattr),
                Err(Errno::EACCES),
                "{name}"
            );
            assert_eq!(check(file, VirtualCall::ListXattr), Ok(()), "{name}");
        }
    }
}
