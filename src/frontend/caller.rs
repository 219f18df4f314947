//! What the kernel knows about the process behind a request and a FUSE
//! request does not carry: its capabilities and supplementary groups. The
//! mount needs them where it acts for the kernel: listing `trusted.*` names
//! (CAP_SYS_ADMIN, as ext4 decides) and clearing set-id bits on write and
//! truncate (CAP_FSETID, and the writer's groups for set-group-id), which
//! the kernel leaves to the mount under `FUSE_HANDLE_KILLPRIV_V2`.

/// `CAP_FSETID`: writes and truncates keep set-id bits.
pub const CAP_FSETID: u32 = 4;
/// `CAP_SYS_ADMIN`: `trusted.*` attributes are visible.
pub const CAP_SYS_ADMIN: u32 = 21;

/// The process behind a request, as the kernel identifies it to the mount.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Its process id (thread group), for `/proc/<pid>/status`.
    pub pid: u32,
    /// Its fs user id.
    pub uid: u32,
    /// Its fs group id.
    pub gid: u32,
}

impl Caller {
    /// Whether it has capability `cap` in its effective set, from
    /// `/proc/<pid>/status`; if that is gone (the caller exited
    /// meanwhile), whether it is root.
    pub fn has_capability(&self, cap: u32) -> bool {
        self.capable(read_status(self.pid).as_deref(), cap)
    }

    /// [`Self::has_capability`] from its status as read.
    fn capable(&self, status: Option<&str>, cap: u32) -> bool {
        let effective = status
            .and_then(|status| field(status, "CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
        match effective {
            Some(caps) => caps & (1 << cap) != 0,
            None => self.uid == 0,
        }
    }

    /// Whether it is in group `gid` (its fs group or a supplementary one)
    /// or has CAP_FSETID: the kernel's `in_group_or_capable`, which
    /// decides whether set-group-id without group-execute survives its
    /// writes. If its status is gone, its fs group and root count.
    fn in_group_or_capable(&self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        // One read of its status answers both questions.
        let status = read_status(self.pid);
        let supplementary = status
            .as_deref()
            .and_then(|status| field(status, "Groups:"))
            .is_some_and(|groups| {
                groups
                    .split_whitespace()
                    .any(|g| g.parse::<u32>() == Ok(gid))
            });
        supplementary || self.capable(status.as_deref(), CAP_FSETID)
    }

    /// The mode a file with mode `mode` and group `gid` gets when this
    /// caller, which lacks CAP_FSETID, writes or truncates it, as the
    /// kernel decides (`setattr_should_drop_suidgid`); `None` if nothing
    /// changes.
    pub fn mode_after_change(&self, mode: u32, gid: u32) -> Option<u32> {
        // Its group is read only for the one case that needs it.
        let keeps_group_bit = |mode: u32| {
            mode & libc::S_ISGID != 0 && mode & libc::S_IXGRP == 0 && self.in_group_or_capable(gid)
        };
        mode_without_setid(mode, keeps_group_bit(mode))
    }
}

/// `/proc/<pid>/status`, if the process is still there.
fn read_status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The `name` line of a process status, without its name.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(name))
}

/// The mode a file with mode `mode` gets from a write or truncate by a
/// process without CAP_FSETID: set-user-id goes, and set-group-id goes if
/// group-execute is set or the writer is outside the file's group
/// (`in_group_or_capable` false). Without group-execute the bit marks
/// mandatory locking, which a group member's write keeps. `None` if
/// nothing changes.
pub fn mode_without_setid(mode: u32, in_group_or_capable: bool) -> Option<u32> {
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || !in_group_or_capable {
        kept &= !libc::S_ISGID;
    }
    (kept != mode).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_go_as_the_kernel_drops_them() {
        for member in [true, false] {
            assert_eq!(mode_without_setid(0o100644, member), None);
            assert_eq!(mode_without_setid(0o104755, member), Some(0o100755));
            assert_eq!(mode_without_setid(0o102755, member), Some(0o100755));
            assert_eq!(mode_without_setid(0o106777, member), Some(0o100777));
        }
        // Set-group-id without group-execute (mandatory locking): a group
        // member's write keeps it, anyone else's clears it.
        assert_eq!(mode_without_setid(0o102644, true), None);
        assert_eq!(mode_without_setid(0o106744, true), Some(0o102744));
        assert_eq!(mode_without_setid(0o102644, false), Some(0o100644));
        assert_eq!(mode_without_setid(0o106744, false), Some(0o100744));
    }

    #[test]
    fn this_process_capabilities_and_groups_are_read() {
        let root = rustix::process::geteuid().is_root();
        let me = Caller {
            pid: std::process::id(),
            uid: 0,
            gid: u32::MAX - 1,
        };
        assert_eq!(me.has_capability(CAP_FSETID), root);
        let groups = rustix::process::getgroups().unwrap();
        if let Some(group) = groups.first() {
            assert!(me.in_group_or_capable(group.as_raw()));
        }
        assert!(me.in_group_or_capable(me.gid));
        // A process that is gone falls back to its uid and fs group.
        let gone = |uid| Caller {
            pid: u32::MAX,
            uid,
            gid: 7,
        };
        assert!(gone(0).has_capability(CAP_SYS_ADMIN));
        assert!(!gone(1000).has_capability(CAP_SYS_ADMIN));
        assert!(gone(1000).in_group_or_capable(7));
        assert!(!gone(1000).in_group_or_capable(8));
        assert_eq!(gone(1000).mode_after_change(0o102644, 8), Some(0o100644));
        assert_eq!(gone(1000).mode_after_change(0o102644, 7), None);
    }
}
