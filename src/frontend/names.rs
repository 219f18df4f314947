//! What a name means in a directory of the mount, and so what a lookup,
//! a listing and a change of that name do: the pure rules that `lookup`,
//! `opendir`, create, unlink, rmdir, rename and link apply.
//!
//! A name is one of three things:
//! - a virtual file (`.control`, `.control.json`, `.stats`), where the
//!   directory has one: the mount root and each encrypted VM home. The
//!   virtual file hides any backing entry of that name, which whoever
//!   writes the datastore may have planted;
//! - an internal name (`.vmcryptfs*`: key bundles, journals, their temps),
//!   anywhere: never shown, never found, never created, removed or renamed
//!   through the mount, so no caller can touch the datastore's own files;
//! - anything else, an ordinary name, which reaches the backing entry.

use std::ffi::OsStr;

use fuser::Errno;

use super::FsResult;
use crate::control::command::ControlScope;
use crate::control::virtual_file::VirtualFile;
use crate::datastore::layout;

/// Where a directory is, as far as the names in it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirPlace {
    /// The datastore root (the mount's root).
    Root,
    /// An encrypted VM home (a directory in the root that has a bundle).
    VmHome,
    /// Any other directory: inside a VM home, a plain directory, or one
    /// unlinked while open.
    Other,
}

impl DirPlace {
    /// Which `.control` the directory carries, if any.
    pub fn control_scope(self) -> Option<ControlScope> {
        match self {
            DirPlace::Root => Some(ControlScope::Datastore),
            DirPlace::VmHome => Some(ControlScope::VmHome),
            DirPlace::Other => None,
        }
    }

    /// What `name` is in a directory here.
    pub fn name(self, name: &OsStr) -> NameKind {
        // Every lookup asks; virtual and internal names all start with a
        // dot, so most names are settled by their first byte.
        if !name.as_encoded_bytes().starts_with(b".") {
            return NameKind::Ordinary;
        }
        if let Some(file) = self
            .control_scope()
            .and_then(|scope| VirtualFile::named(scope, name))
        {
            return NameKind::Virtual(file);
        }
        if layout::is_internal_name(name) {
            return NameKind::Internal;
        }
        NameKind::Ordinary
    }
}

/// What a name is in one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A virtual file of the directory.
    Virtual(VirtualFile),
    /// One of the datastore's own files.
    Internal,
    /// A name that reaches the backing entry.
    Ordinary,
}

impl NameKind {
    /// Whether a lookup of the name reaches the backing entry: ENOENT for
    /// an internal name. A virtual name is answered by the virtual file
    /// before this is asked.
    pub fn check_lookup(self) -> FsResult<()> {
        match self {
            NameKind::Internal => Err(Errno::ENOENT),
            NameKind::Virtual(_) | NameKind::Ordinary => Ok(()),
        }
    }

    /// Whether a caller may create, remove, rename or link an entry of
    /// this name (either end of a rename): EPERM for a virtual or an
    /// internal name.
    pub fn check_change(self) -> FsResult<()> {
        match self {
            NameKind::Ordinary => Ok(()),
            NameKind::Virtual(_) | NameKind::Internal => Err(Errno::EPERM),
        }
    }

    /// Whether a backing entry of this name is listed. A virtual file is
    /// listed once, as itself, even when a backing entry shares its name
    /// (a lookup of that name finds the virtual file too).
    pub fn listed_from_backing(self) -> bool {
        self == NameKind::Ordinary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACES: [DirPlace; 3] = [DirPlace::Root, DirPlace::VmHome, DirPlace::Other];

    /// Names of every kind: the virtual files' names, the datastore's own
    /// files and temps, and ordinary names that resemble them.
    const NAMES: &[&str] = &[
        ".control",
        ".control.json",
        ".stats",
        ".vmcryptfs-bundle",
        ".vmcryptfs-bundle.tmp.1.ab",
        ".vmcryptfs-journal",
        ".vmcryptfs",
        ".control.json.tmp",
        ".Control",
        ".stats~",
        "control",
        "vmcryptfs-bundle",
        "..vmcryptfs",
        ".",
        "..",
        "vm1.vmx",
        "disk-flat.vmdk",
    ];

    #[test]
    fn only_the_root_and_vm_homes_carry_virtual_files_and_the_root_alone_stats() {
        for place in PLACES {
            let virtual_names: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|name| matches!(place.name(name.as_ref()), NameKind::Virtual(_)))
                .collect();
            let expected: &[&str] = match place {
                DirPlace::Root => &[".control", ".control.json", ".stats"],
                DirPlace::VmHome => &[".control", ".control.json"],
                DirPlace::Other => &[],
            };
            assert_eq!(virtual_names, expected, "{place:?}");
        }
        // Each is the file of the directory's own scope.
        for place in [DirPlace::Root, DirPlace::VmHome] {
            let scope = place.control_scope().unwrap();
            for file in VirtualFile::all_in(scope) {
                assert_eq!(place.name(file.name().as_ref()), NameKind::Virtual(*file));
                assert_eq!(file.scope(), scope);
            }
        }
    }

    #[test]
    fn internal_names_are_internal_in_every_directory_and_nothing_else_is() {
        for place in PLACES {
            for name in NAMES {
                let internal = place.name(name.as_ref()) == NameKind::Internal;
                assert_eq!(
                    internal,
                    name.starts_with(".vmcryptfs"),
                    "{name} in {place:?}"
                );
            }
        }
    }

    /// The whole table: for every place and name, what a lookup, a change
    /// and a listing do.
    #[test]
    fn lookups_changes_and_listings_follow_the_kind_of_name() {
        for place in PLACES {
            for name in NAMES {
                let kind = place.name(name.as_ref());
                let (lookup, change, listed) = match kind {
                    NameKind::Virtual(_) => (Ok(()), Err(Errno::EPERM), false),
                    NameKind::Internal => (Err(Errno::ENOENT), Err(Errno::EPERM), false),
                    NameKind::Ordinary => (Ok(()), Ok(()), true),
                };
                let what = format!("{name} in {place:?} ({kind:?})");
                assert_eq!(kind.check_lookup(), lookup, "lookup of {what}");
                assert_eq!(kind.check_change(), change, "change of {what}");
                assert_eq!(kind.listed_from_backing(), listed, "listing of {what}");
            }
        }
    }

    #[test]
    fn names_that_are_not_utf8_are_judged_by_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        for place in PLACES {
            let name = |bytes: &'static [u8]| place.name(OsStr::from_bytes(bytes));
            assert_eq!(name(b".vmcryptfs\xff"), NameKind::Internal);
            assert_eq!(name(b".control\xff"), NameKind::Ordinary);
            assert_eq!(name(b"\xff.control"), NameKind::Ordinary);
        }
    }
}
