//! Which renames and hard links keep how an entry is stored: the pure rule
//! behind the EXDEV that `rename` and `link` return.
//!
//! A rename cannot re-encrypt: the backing file system moves the bytes as
//! they are. So a move that would change how an entry is stored fails
//! with EXDEV, and `mv` copies instead (reading plaintext, writing it
//! through the mount into its new class):
//! - between two encryption domains: from one VM home to another, or into
//!   or out of one (outside every VM home is one domain, in clear);
//! - of a regular file, to a name of another class in its VM home (an
//!   encrypted name to a pass-through disk name, or back), as the
//!   destination VM's authenticated bundle decides the classes;
//! - of a VM home itself anywhere but the datastore root (below another
//!   directory it would stop being a VM home).

use std::ffi::OsStr;

use fuser::Errno;

use super::FsResult;
use crate::datastore::layout::StoragePolicy;

/// Which encryption domain one end of a move is in. `V` tells VM homes
/// apart (the mount uses each VM home's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain<V> {
    /// Outside every encrypted VM home: stored as is.
    Clear,
    /// Inside (or being) this encrypted VM home.
    VmHome(V),
}

/// What a rename or link moves, as far as its storage goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: its name decides its class.
    RegularFile,
    /// A directory, symlink or special file: its name decides nothing.
    Other,
}

/// One end of a move: its domain, its name, and whether its directory is
/// the datastore root. An entry of the root in a VM home's domain is that
/// VM home itself.
#[derive(Clone, Copy, Debug)]
pub struct End<'n, V> {
    /// The encryption domain.
    pub domain: Domain<V>,
    /// The entry's name in its directory.
    pub name: &'n OsStr,
    /// Whether the directory is the datastore root.
    pub in_root: bool,
}

/// Checks that moving `entry` from `from` to `to` keeps how it is stored:
/// EXDEV if not. `policy` gives a VM home's authenticated storage policy,
/// and is asked only when the destination is a VM home of the same
/// domain; it fails closed (a VM whose bundle has not authenticated
/// refuses every move into it), and its error is returned as it is.
pub fn check_move<V: PartialEq>(
    entry: Entry,
    from: End<'_, V>,
    to: End<'_, V>,
    policy: impl FnOnce(V) -> FsResult<StoragePolicy>,
) -> FsResult<()> {
    if from.in_root && matches!(from.domain, Domain::VmHome(_)) {
        // A VM home itself: renamed in place only (the datastore renames
        // its record).
        return if to.in_root {
            Ok(())
        } else {
            Err(Errno::EXDEV)
        };
    }
    if from.domain != to.domain {
        return Err(Errno::EXDEV);
    }
    let Domain::VmHome(vm) = to.domain else {
        return Ok(());
    };
    let policy = policy(vm)?;
    if entry == Entry::RegularFile && policy.class_of(from.name) != policy.class_of(to.name) {
        return Err(Errno::EXDEV);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::layout::ContentClass;
    use crate::format::content_layout::ContentLayout;
    use crate::format::disk_pattern::DiskPattern;

    const DOMAINS: [Domain<u8>; 3] = [Domain::Clear, Domain::VmHome(1), Domain::VmHome(2)];
    const ENTRIES: [Entry; 2] = [Entry::RegularFile, Entry::Other];
    /// An ordinary VM file, disks by the default and the legacy patterns
    /// (`*.vmdk` only), and a name no pattern calls a disk.
    const NAMES: [&str; 5] = [
        "vm1.vmx",
        "disk-flat.vmdk",
        "disk.qcow2",
        "DISK.RAW",
        "notes",
    ];

    fn policies() -> Vec<StoragePolicy> {
        let mut all = Vec::new();
        for encrypt_disks in [false, true] {
            for disk_pattern in [DiskPattern::new_vm_default(), DiskPattern::legacy()] {
                all.push(StoragePolicy {
                    encrypt_disks,
                    disk_pattern,
                    content_layout: ContentLayout::PageAligned,
                });
            }
        }
        all
    }

    fn end(domain: Domain<u8>, name: &str, in_root: bool) -> End<'_, u8> {
        End {
            domain,
            name: name.as_ref(),
            in_root,
        }
    }

    /// Every combination of what moves, both ends' domains, names and
    /// directories, and the destination's policy, against the rule stated
    /// case by case.
    #[test]
    fn every_move_keeps_its_storage_or_fails_with_exdev() {
        let mut refused = 0;
        let pairs = |n: usize| (0..n).flat_map(move |a| (0..n).map(move |b| (a, b)));
        for policy in policies() {
            for entry in ENTRIES {
                for (from, to) in pairs(DOMAINS.len()) {
                    let (from, to) = (DOMAINS[from], DOMAINS[to]);
                    for (name, new_name) in pairs(NAMES.len()) {
                        let (name, new_name) = (NAMES[name], NAMES[new_name]);
                        for (from_root, to_root) in
                            [(false, false), (false, true), (true, false), (true, true)]
                        {
                            let mut asked = None;
                            let result = check_move(
                                entry,
                                end(from, name, from_root),
                                end(to, new_name, to_root),
                                |vm| {
                                    asked = Some(vm);
                                    Ok(policy.clone())
                                },
                            );
                            let vm_home = from_root && from != Domain::Clear;
                            let class_changes = policy.class_of(name.as_ref())
                                != policy.class_of(new_name.as_ref());
                            // A VM home moves only within the root; anything
                            // else keeps its domain, and a regular file in a
                            // VM home its class.
                            let keeps_storage = if vm_home {
                                to_root
                            } else {
                                from == to
                                    && !(to != Domain::Clear
                                        && entry == Entry::RegularFile
                                        && class_changes)
                            };
                            let expected = if keeps_storage {
                                Ok(())
                            } else {
                                Err(Errno::EXDEV)
                            };
                            let what = format!(
                                "{entry:?} {from:?}/{name} (root: {from_root}) -> {to:?}/{new_name} (root: {to_root}) under {policy:?}"
                            );
                            assert_eq!(result, expected, "{what}");
                            // The policy is the destination's, asked only
                            // when the classes could decide.
                            let expected_ask = match to {
                                Domain::VmHome(vm) if !vm_home && from == to => Some(vm),
                                _ => None,
                            };
                            assert_eq!(asked, expected_ask, "policy asked: {what}");
                            refused += usize::from(result.is_err());
                        }
                    }
                }
            }
        }
        assert!(refused > 0);
    }

    #[test]
    fn a_vm_whose_bundle_has_not_authenticated_refuses_every_move_into_it() {
        for entry in ENTRIES {
            let result = check_move(
                entry,
                end(Domain::VmHome(1), "vm1.vmx", false),
                end(Domain::VmHome(1), "vm1.vmx", false),
                |_| Err(Errno::from_i32(libc::ENOKEY)),
            );
            assert_eq!(result, Err(Errno::from_i32(libc::ENOKEY)), "{entry:?}");
        }
        // A move that crosses domains is EXDEV before any key is needed.
        let result = check_move(
            Entry::RegularFile,
            end(Domain::Clear, "a", false),
            end(Domain::VmHome(1), "a", false),
            |_| Err(Errno::from_i32(libc::ENOKEY)),
        );
        assert_eq!(result, Err(Errno::EXDEV));
    }

    /// The cases the integration test `posix_semantics::cross_domain_link_
    /// and_rename_fail_with_exdev_and_mv_copies` runs through the mount,
    /// here without one.
    #[test]
    fn a_disk_renamed_to_an_ordinary_name_in_a_vm_without_disk_encryption_is_exdev() {
        let policy = StoragePolicy::new_vm(false, ContentLayout::PageAligned);
        assert_eq!(
            policy.class_of("disk-flat.vmdk".as_ref()),
            ContentClass::Plain
        );
        assert_eq!(
            policy.class_of("disk.bak".as_ref()),
            ContentClass::Encrypted
        );
        let rename = |entry, name, new_name| {
            check_move(
                entry,
                end(Domain::VmHome(1), name, false),
                end(Domain::VmHome(1), new_name, false),
                |_| Ok(policy.clone()),
            )
        };
        assert_eq!(
            rename(Entry::RegularFile, "disk-flat.vmdk", "disk.bak"),
            Err(Errno::EXDEV)
        );
        assert_eq!(
            rename(Entry::RegularFile, "disk.bak", "disk-flat.vmdk"),
            Err(Errno::EXDEV)
        );
        assert_eq!(rename(Entry::RegularFile, "a-flat.vmdk", "b.qcow2"), Ok(()));
        // A directory's name decides nothing.
        assert_eq!(rename(Entry::Other, "disk-flat.vmdk", "disk.bak"), Ok(()));
    }
}
