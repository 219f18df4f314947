//! What the kernel knows about the process behind a request and a FUSE
//! request does not carry: its capabilities. The mount needs them where it
//! acts for the kernel: listing `trusted.*` names (CAP_SYS_ADMIN, as ext4
//! decides) and clearing set-id bits on write and truncate (CAP_FSETID),
//! which the kernel leaves to the mount under `FUSE_HANDLE_KILLPRIV_V2`.

/// `CAP_FSETID`: writes and truncates keep set-id bits.
pub const CAP_FSETID: u32 = 4;
/// `CAP_SYS_ADMIN`: `trusted.*` attributes are visible.
pub const CAP_SYS_ADMIN: u32 = 21;

/// Whether process `pid` (user `uid`) has capability `cap` in its
/// effective set, from `/proc/<pid>/status`; if that is gone (the caller
/// exited meanwhile), whether it is root.
pub fn has_capability(pid: u32, uid: u32, cap: u32) -> bool {
    let effective = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        });
    match effective {
        Some(caps) => caps & (1 << cap) != 0,
        None => uid == 0,
    }
}

/// The mode a file with mode `mode` gets when a process without
/// CAP_FSETID writes or truncates it, as the kernel decides
/// (`setattr_should_drop_suidgid`): set-user-id goes, and set-group-id
/// goes if group-execute is set (without it, the bit marks mandatory
/// locking and stays). `None` if nothing changes.
pub fn mode_without_setid(mode: u32) -> Option<u32> {
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        kept &= !libc::S_ISGID;
    }
    (kept != mode).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_bits_go_as_the_kernel_drops_them() {
        assert_eq!(mode_without_setid(0o100644), None);
        assert_eq!(mode_without_setid(0o104755), Some(0o100755));
        assert_eq!(mode_without_setid(0o102755), Some(0o100755));
        assert_eq!(mode_without_setid(0o106777), Some(0o100777));
        // Set-group-id without group-execute: mandatory locking, kept.
        assert_eq!(mode_without_setid(0o102644), None);
        assert_eq!(mode_without_setid(0o106744), Some(0o102744));
    }

    #[test]
    fn this_process_capabilities_are_read() {
        let root = nix::unistd::geteuid().is_root();
        let pid = std::process::id();
        assert_eq!(has_capability(pid, 0, CAP_FSETID), root);
        // A process that is gone falls back to its uid.
        assert!(has_capability(u32::MAX, 0, CAP_SYS_ADMIN));
        assert!(!has_capability(u32::MAX, 1000, CAP_SYS_ADMIN));
    }
}
