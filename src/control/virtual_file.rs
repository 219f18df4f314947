//! The virtual files a mount adds: which exist where, and what they are.
//!
//! | file | where | access |
//! |---|---|---|
//! | `.control` | mount root and each encrypted VM home | read status, write commands |
//! | `.control.json` | same | read the status as JSON |
//! | `.stats` | mount root | read counters (Prometheus text format) |

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

    /// Permission bits shown for it.
    pub fn mode(self) -> u16 {
        if self.writable() {
            0o600
        } else {
            0o444
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
}
