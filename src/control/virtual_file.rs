//! The virtual files a mount adds: which exist where, and what they are.
//!
//! | file | where | access |
//! |---|---|---|
//! | `.control` | mount root and each encrypted VM home | read status, write commands |
//! | `.control.json` | same | read the status as JSON |
//! | `.stats` | mount root | read counters (Prometheus text format) |
//!
//! They belong to the user the mount runs as, never to whoever owns the
//! datastore directory (that may be the datastore's adversary), and only
//! that user may read them: status names VMs, KEKs and key providers. The
//! mount option `status_group=GROUP` lets one group read them, and still
//! not write commands ([`StatusAccess`]).

use super::command::ControlScope;

/// One virtual file of one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VirtualFile {
    /// `.control`: status text; takes commands.
    Control(ControlScope),
    /// `.control.json`: the same status as JSON; read-only.
    ControlJson(ControlScope),
    /// `.stats`: live counters of the mount; read-only.
    Stats,
}

/// Name of the status-as-JSON file.
pub const CONTROL_JSON_FILE_NAME: &str = ".control.json";
/// Name of the counters file.
pub const STATS_FILE_NAME: &str = ".stats";

impl VirtualFile {
    /// The virtual files of a directory with this control scope.
    pub fn all_in(scope: ControlScope) -> &'static [VirtualFile] {
        match scope {
            ControlScope::Datastore => &[
                VirtualFile::Control(ControlScope::Datastore),
                VirtualFile::ControlJson(ControlScope::Datastore),
                VirtualFile::Stats,
            ],
            ControlScope::VmHome => &[
                VirtualFile::Control(ControlScope::VmHome),
                VirtualFile::ControlJson(ControlScope::VmHome),
            ],
        }
    }

    /// The virtual file called `name` in a directory with this scope.
    pub fn named(scope: ControlScope, name: &std::ffi::OsStr) -> Option<VirtualFile> {
        Self::all_in(scope)
            .iter()
            .copied()
            .find(|file| name == file.name())
    }

    /// Its file name.
    pub fn name(self) -> &'static str {
        match self {
            VirtualFile::Control(_) => crate::datastore::layout::CONTROL_FILE_NAME,
            VirtualFile::ControlJson(_) => CONTROL_JSON_FILE_NAME,
            VirtualFile::Stats => STATS_FILE_NAME,
        }
    }

    /// The directory scope it belongs to.
    pub fn scope(self) -> ControlScope {
        match self {
            VirtualFile::Control(scope) | VirtualFile::ControlJson(scope) => scope,
            VirtualFile::Stats => ControlScope::Datastore,
        }
    }

    /// Whether it takes writes (commands).
    pub fn writable(self) -> bool {
        matches!(self, VirtualFile::Control(_))
    }
}

/// Owner and permissions of the virtual files of one mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusAccess {
    /// Owner: the user the mount runs as.
    pub uid: u32,
    /// Group: the status group, else the mount's own group.
    pub gid: u32,
    /// Whether the group may read them (`status_group` was given).
    pub group_reads: bool,
}

impl StatusAccess {
    /// Owned by `uid`:`gid`; readable by group `status_group` too, if given.
    pub fn new(uid: u32, gid: u32, status_group: Option<u32>) -> Self {
        Self {
            uid,
            gid: status_group.unwrap_or(gid),
            group_reads: status_group.is_some(),
        }
    }

    /// Permission bits of `file`: the owner reads, and writes commands to
    /// `.control`; the status group, if any, only reads.
    pub fn mode(self, file: VirtualFile) -> u16 {
        let owner = if file.writable() { 0o600 } else { 0o400 };
        if self.group_reads {
            owner | 0o040
        } else {
            owner
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_per_scope() {
        use ControlScope::*;
        assert_eq!(
            VirtualFile::named(VmHome, ".control".as_ref()),
            Some(VirtualFile::Control(VmHome))
        );
        assert_eq!(
            VirtualFile::named(Datastore, ".control.json".as_ref()),
            Some(VirtualFile::ControlJson(Datastore))
        );
        assert_eq!(
            VirtualFile::named(Datastore, ".stats".as_ref()),
            Some(VirtualFile::Stats)
        );
        assert_eq!(VirtualFile::named(VmHome, ".stats".as_ref()), None);
        assert_eq!(VirtualFile::named(VmHome, "vm.vmx".as_ref()), None);
        for scope in [VmHome, Datastore] {
            for file in VirtualFile::all_in(scope) {
                assert_eq!(file.scope(), scope);
                assert_eq!(VirtualFile::named(scope, file.name().as_ref()), Some(*file));
            }
        }
        assert!(VirtualFile::Control(VmHome).writable());
        assert!(!VirtualFile::Stats.writable());
    }

    #[test]
    fn only_the_owner_reads_unless_a_status_group_is_given() {
        let private = StatusAccess::new(0, 0, None);
        assert_eq!(
            private.mode(VirtualFile::Control(ControlScope::VmHome)),
            0o600
        );
        assert_eq!(private.mode(VirtualFile::Stats), 0o400);
        assert_eq!(
            private.mode(VirtualFile::ControlJson(ControlScope::Datastore)),
            0o400
        );
        let shared = StatusAccess::new(0, 0, Some(4242));
        assert_eq!(shared.gid, 4242);
        assert_eq!(
            shared.mode(VirtualFile::Control(ControlScope::Datastore)),
            0o640
        );
        assert_eq!(shared.mode(VirtualFile::Stats), 0o440);
    }
}
