//! The datastore root's status lines of every VM home, each kept until
//! that VM home's status changes.
//!
//! Why: a read of the root `.control.json` of ten thousand VM homes took
//! about 60 ms here, and by `perf` two thirds of that was building every
//! VM's status (copying its bundle, name, last command and scrub state)
//! and rendering it as JSON, then freeing it all; the document was the
//! same as the read before for every VM nothing had happened to. Now each
//! VM home's rendered lines are kept with its
//! [`StatusStamp`](crate::datastore::vm_home::StatusStamp), which is cheap
//! to read and changes whenever anything its status shows changes, and a
//! read renders again only the VM homes whose stamp moved.
//!
//! Nothing shown is older than an uncached read would show: the stamps
//! are read at every read (with what the datastore's status view checks
//! on disk), and a stamp never comes back to an earlier value while the
//! status it stood for differs (see `StatusStamp`).

use std::collections::{HashMap, HashSet};

use super::status::RootEntry;
use crate::datastore::registry::Datastore;
use crate::datastore::vm_home::StatusStamp;
use crate::datastore::DatastoreError;

/// Every VM home's root status lines as the last read rendered them.
#[derive(Default)]
pub struct RootCache {
    /// By VM home (`StatusStamp::vm`): the stamp its lines were rendered
    /// at, and the lines.
    entries: HashMap<u64, (StatusStamp, RootEntry)>,
    /// The VM homes of the last read, in the datastore's order (by name).
    order: Vec<u64>,
}

impl RootCache {
    /// Brings every VM home's lines up to date with `datastore`, rendering
    /// only those whose stamp changed; returns how many that was. If the
    /// datastore cannot be listed, no VM home is kept (the read shows
    /// none, with the error).
    pub fn refresh(&mut self, datastore: &Datastore) -> Result<usize, DatastoreError> {
        let current = datastore.statuses_since(|stamp| {
            self.entries
                .get(&stamp.vm())
                .is_some_and(|(rendered, _)| rendered == stamp)
        });
        self.order.clear();
        let current = match current {
            Ok(current) => current,
            Err(err) => {
                self.entries.clear();
                return Err(err);
            }
        };
        let mut rendered = 0;
        for (stamp, status) in current {
            self.order.push(stamp.vm());
            if let Some(status) = status {
                self.entries
                    .insert(stamp.vm(), (stamp, RootEntry::of(&status)));
                rendered += 1;
            }
        }
        if self.entries.len() > self.order.len() {
            let listed: HashSet<u64> = self.order.iter().copied().collect();
            self.entries.retain(|vm, _| listed.contains(vm));
        }
        Ok(rendered)
    }

    /// The VM homes' lines, in the datastore's order, as of the last
    /// [`RootCache::refresh`].
    pub fn entries(&self) -> Vec<&RootEntry> {
        self.order.iter().map(|vm| &self.entries[vm].1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{write_datastore_json, DatastoreSummary};
    use crate::datastore::layout::StoragePolicy;
    use crate::datastore::vm_keys::create_vm_home;
    use crate::format::content_layout::ContentLayout;
    use crate::keys::embedded::EmbeddedProvider;
    use crate::keys::provider_set::ProviderSet;
    use crate::keys::KeyProvider;
    use std::ffi::OsStr;
    use std::sync::Arc;

    /// A datastore of `names`, embedded provider.
    fn datastore(base: &std::path::Path, names: &[&str]) -> Datastore {
        let keystore = base.join("ks");
        let provider = EmbeddedProvider::init(&keystore).unwrap().0;
        let policy = StoragePolicy::new_vm(false, ContentLayout::PageAligned);
        for name in names {
            create_vm_home(&base.join("ds").join(name), &provider, &policy).unwrap();
        }
        Datastore::new(
            base.join("ds"),
            Arc::new(ProviderSet::open(&keystore).unwrap()),
        )
    }

    /// What the root `.control.json` shows through `cache` now, by VM,
    /// and how many VM homes that read rendered.
    fn read(
        cache: &mut RootCache,
        datastore: &Datastore,
    ) -> (HashMap<String, serde_json::Value>, usize) {
        let rendered = cache.refresh(datastore).unwrap();
        let entries = cache.entries();
        let mut out = Vec::new();
        write_datastore_json(
            &DatastoreSummary {
                root: "/ds".into(),
                provider: "local",
                provider_current_version: None,
                vms: &entries,
                last_command: None,
            },
            &mut out,
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let vms = doc["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|vm| (vm["vm"].as_str().unwrap().to_string(), vm.clone()))
            .collect();
        (vms, rendered)
    }

    /// Every kind of change a VM home's status can go through shows in the
    /// next read, exactly as an uncached read shows it, and a read after
    /// nothing changed renders nothing again. An open count that goes up
    /// and back down between reads (the stamp holds the counts, not a
    /// flag) is shown as it is.
    #[test]
    fn every_change_shows_at_the_next_read_and_nothing_else_is_rendered_again() {
        let dir = tempfile::tempdir().unwrap();
        let datastore = datastore(dir.path(), &["vm1", "vm2", "vm3"]);
        let mut cache = RootCache::default();
        // Reads through `cache` show what an uncached read shows, and
        // render `expected` VM homes (if given).
        let check = |cache: &mut RootCache, what: &str, expected: Option<usize>| {
            let (shown, rendered) = read(cache, &datastore);
            assert_eq!(
                shown,
                read(&mut RootCache::default(), &datastore).0,
                "after {what}"
            );
            if let Some(expected) = expected {
                assert_eq!(rendered, expected, "VM homes rendered after {what}");
            }
            shown
        };
        check(&mut cache, "the first read", Some(3));
        // Past the window in which a VM home's directory stamp is not
        // trusted (a re-read forgets the peeked bundle): from here on,
        // reads that find nothing changed render nothing.
        std::thread::sleep(std::time::Duration::from_millis(300));
        check(&mut cache, "a settled read", None);
        check(&mut cache, "nothing", Some(0));

        let vm = |name: &str| datastore.vm_home(OsStr::new(name)).unwrap();
        let provider = datastore.provider();

        // Unlocked (the keys change), then a file opened and closed.
        vm("vm1").keyring(provider).unwrap();
        let shown = check(&mut cache, "an unlock", Some(1));
        assert_eq!(shown["vm1"]["state"], "unlocked");
        let (_, _) = vm("vm1").keyring_for_open_file(provider).unwrap();
        let handle = vm("vm1").handle_opened();
        let shown = check(&mut cache, "an open", Some(1));
        assert_eq!(
            (&shown["vm1"]["open_files"], &shown["vm1"]["open_handles"]),
            (&1.into(), &1.into())
        );
        // Closed and opened again between two reads: the counts are what
        // they were, and shown as they are.
        drop(handle);
        vm("vm1").file_closed();
        let (_, _) = vm("vm1").keyring_for_open_file(provider).unwrap();
        let shown = check(&mut cache, "a close and an open", None);
        assert_eq!(
            (&shown["vm1"]["open_files"], &shown["vm1"]["open_handles"]),
            (&1.into(), &0.into())
        );
        vm("vm1").file_closed();
        let shown = check(&mut cache, "a close", Some(1));
        assert_eq!(shown["vm1"]["open_files"], 0);

        // A command recorded, a rotation and re-key, a key flush.
        vm("vm2").record_command(crate::datastore::vm_home::CommandRecord {
            command: "scrub".into(),
            result: "ok".into(),
        });
        assert_eq!(
            check(&mut cache, "a command", Some(1))["vm2"]["last_command"],
            "scrub"
        );
        KeyProvider::rotate(provider).unwrap();
        datastore.rekey(&vm("vm3"), provider).unwrap();
        let shown = check(&mut cache, "a rotation and a re-key", None);
        assert_eq!(shown["vm3"]["kek_version"], 2);
        assert_eq!(shown["vm2"]["needs_rekey"], true);
        datastore.flush_keys();
        assert_eq!(
            check(&mut cache, "a flush", None)["vm1"]["state"],
            "not-loaded"
        );

        // A VM home renamed, one removed.
        std::fs::rename(dir.path().join("ds/vm2"), dir.path().join("ds/vm4")).unwrap();
        datastore.rename_vm_home(OsStr::new("vm2"), OsStr::new("vm4"));
        let shown = check(&mut cache, "a rename", None);
        assert!(shown.contains_key("vm4") && !shown.contains_key("vm2"));
        std::fs::remove_dir_all(dir.path().join("ds/vm1")).unwrap();
        datastore.forget_vm_home(OsStr::new("vm1"));
        let shown = check(&mut cache, "a removal", None);
        assert_eq!(shown.len(), 2);
        assert_eq!(
            cache.entries.len(),
            2,
            "the removed VM home's lines dropped"
        );
    }

    #[test]
    fn a_datastore_that_cannot_be_listed_shows_no_vm_home() {
        let dir = tempfile::tempdir().unwrap();
        let datastore = datastore(dir.path(), &["vm1"]);
        let mut cache = RootCache::default();
        assert_eq!(read(&mut cache, &datastore).0.len(), 1);
        std::fs::rename(dir.path().join("ds"), dir.path().join("gone")).unwrap();
        assert!(cache.refresh(&datastore).is_err());
        assert!(cache.entries().is_empty());
    }
}
