//! The VM homes of one mounted datastore.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::bundle_file;
use super::convert;
use super::current_kek::CurrentKekCache;
use super::rekey_batch;
use super::status_view::{DirStamp, SeenVm, StatusView};
use super::vm_home::{StatusStamp, VmHome, VmStatus};
use super::vm_keys::RekeyOutcome;
use super::DatastoreError;
use crate::keys::bundle_sequences::BundleSequences;
use crate::keys::provider_set::ProviderSet;

/// The outcome of re-keying one VM home, by its directory name.
pub type VmRekeyResult = (OsString, Result<RekeyOutcome, DatastoreError>);

/// A mounted datastore: its root, its key provider, and the VM homes seen.
pub struct Datastore {
    /// The datastore directory (backing store of the mount).
    root: PathBuf,
    /// The key providers of this host; each VM home's bundle names its
    /// own. Immutable.
    provider: Arc<ProviderSet>,
    /// This host's bundle sequence record, shared by every VM home.
    /// Immutable handle; the record locks itself.
    sequences: Arc<BundleSequences>,
    /// VM homes by directory name, added on first lookup. Read-locked on
    /// every lookup; write-locked to add, rename or drop an entry.
    vms: RwLock<HashMap<OsString, Arc<VmHome>>>,
    /// Providers' current KEK versions as status shows them; its own
    /// locks, never held with `vms`.
    current_keks: CurrentKekCache,
    /// What the last status read of every VM home found on disk. Held for
    /// a whole such read (so two readers do not both re-read what
    /// changed); `vms` and a VM home's own locks are taken inside it,
    /// never the other way round.
    status_view: Mutex<StatusView>,
}

impl Datastore {
    /// A datastore rooted at `root`; its VM homes' bundles are checked
    /// against the sequence record of the providers' key store.
    pub fn new(root: PathBuf, provider: Arc<ProviderSet>) -> Self {
        Self {
            root,
            sequences: Arc::new(BundleSequences::in_keystore(provider.keystore())),
            provider,
            vms: RwLock::new(HashMap::new()),
            current_keks: CurrentKekCache::new(),
            status_view: Mutex::new(StatusView::default()),
        }
    }

    /// The datastore directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key providers.
    pub fn provider(&self) -> &ProviderSet {
        &self.provider
    }

    /// The VM home named `name` (a direct subdirectory of the root), if that
    /// directory holds a key bundle (a symlink to a directory is never a VM
    /// home, nor is a symlink a bundle; see `bundle_file::has_bundle`), or
    /// if this mount has seen it as one. The bundle is checked on every
    /// call, so a VM created by `vmcryptfs vm create` while mounted appears.
    ///
    /// A VM home once seen stays one when its bundle vanishes behind the
    /// mount: deleting the bundle is the cheapest downgrade a datastore
    /// writer has, and a directory taken for plain from then on would
    /// store the hypervisor's next writes (a new log, a rewritten `.nvram`)
    /// in clear. It stays locked instead, its `locked-reason` naming the
    /// missing bundle ([`VmHome`]), until the bundle is put back or the VM
    /// home is removed or renamed through the mount.
    pub fn vm_home(&self, name: &OsStr) -> Option<Arc<VmHome>> {
        let dir = self.root.join(name);
        if !bundle_file::has_bundle(&dir) {
            return self.vms.read().expect("vms lock").get(name).cloned();
        }
        if let Some(vm) = self.vms.read().expect("vms lock").get(name) {
            return Some(vm.clone());
        }
        let mut vms = self.vms.write().expect("vms lock");
        let vm = vms
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(VmHome::new(name.to_owned(), dir, self.sequences.clone())));
        Some(vm.clone())
    }

    /// The VM homes this mount has seen, by name.
    pub fn loaded_vms(&self) -> Vec<Arc<VmHome>> {
        let mut vms: Vec<Arc<VmHome>> = self
            .vms
            .read()
            .expect("vms lock")
            .values()
            .cloned()
            .collect();
        vms.sort_by_key(|vm| vm.name());
        vms
    }

    /// Records that VM home `from` was renamed to `to` through the mount.
    pub fn rename_vm_home(&self, from: &OsStr, to: &OsStr) {
        let mut vms = self.vms.write().expect("vms lock");
        if let Some(vm) = vms.remove(from) {
            vm.set_location(to, self.root.join(to));
            vms.insert(to.to_owned(), vm);
        }
    }

    /// Forgets a VM home that was removed.
    pub fn forget_vm_home(&self, name: &OsStr) {
        self.vms.write().expect("vms lock").remove(name);
    }

    /// Every VM home in the datastore, by scanning the root (bundles are the
    /// source of truth), sorted by name.
    pub fn scan_vm_homes(&self) -> Result<Vec<Arc<VmHome>>, DatastoreError> {
        Ok(self
            .subdirectories()?
            .iter()
            .filter_map(|n| self.vm_home(n))
            .collect())
    }

    /// Names of the root's subdirectories (not symlinks), sorted.
    fn subdirectories(&self) -> Result<Vec<OsString>, DatastoreError> {
        subdirectory_names(&self.root).map_err(|e| {
            DatastoreError::io(format!("listing datastore {}", self.root.display()), e)
        })
    }

    /// Status of every VM home. Unwraps nothing, and asks providers at
    /// most once per KEK series every few seconds (see [`VmHome::status`]).
    /// What it needs from disk is read again only for VM homes that
    /// changed since the last call (see [`StatusView`]): one `lstat` per
    /// VM home otherwise.
    pub fn statuses(&self) -> Result<Vec<VmStatus>, DatastoreError> {
        Ok(self
            .statuses_since(|_| false)?
            .into_iter()
            .filter_map(|(_, status)| status)
            .collect())
    }

    /// Every VM home's [`StatusStamp`], sorted by name, each with its
    /// status unless `known` says the caller has what that stamp stands
    /// for already: the root status files keep each VM home's lines until
    /// its stamp changes, and building ten thousand statuses that did not
    /// change was most of a read.
    pub fn statuses_since(
        &self,
        known: impl Fn(&StatusStamp) -> bool,
    ) -> Result<Vec<(StatusStamp, Option<VmStatus>)>, DatastoreError> {
        let mut view = self.status_view.lock().expect("status view lock");
        let root_now = DirStamp::of(&self.root);
        if !view.listing_holds(root_now) {
            let taken = SystemTime::now();
            view.names = self.subdirectories()?;
            view.root = root_now.map(|stamp| (stamp, taken));
            let StatusView { names, vms, .. } = &mut *view;
            let listed: HashSet<&OsString> = names.iter().collect();
            vms.retain(|name, _| listed.contains(name));
        }
        let root = std::fs::File::open(&self.root).map_err(|e| {
            DatastoreError::io(format!("opening datastore {}", self.root.display()), e)
        })?;
        let mut current = self.current_keks.for_read(self.provider());
        let StatusView { names, vms, .. } = &mut *view;
        let mut statuses = Vec::with_capacity(names.len());
        for name in names.iter() {
            let now = DirStamp::of_entry(root.as_fd(), name);
            // Looked up before any insertion, so that the name is copied
            // only for a VM home seen anew.
            if !vms.get(name).is_some_and(|seen| seen.still_holds(now)) {
                let Some(stamp) = now else {
                    vms.remove(name);
                    continue;
                };
                let taken = SystemTime::now();
                let vm = self.vm_home(name);
                let conversion = vm.as_ref().and_then(|vm| {
                    vm.forget_peeked();
                    convert::pending(&vm.dir()).map(|p| p.to_string())
                });
                vms.insert(name.clone(), SeenVm::new(vm, conversion, stamp, taken));
            }
            let seen = &vms[name];
            if let Some(vm) = &seen.vm {
                let stamp = vm.status_stamp(seen.conversion.clone(), &mut current);
                let status = (!known(&stamp)).then(|| vm.status_from(&stamp, &mut current));
                statuses.push((stamp, status));
            }
        }
        Ok(statuses)
    }

    /// Status of one VM home, as [`Datastore::statuses`].
    pub fn status_of(&self, vm: &VmHome) -> VmStatus {
        vm.status(self.provider(), &self.current_keks)
    }

    /// The default provider's current KEK version for the root status,
    /// asked at most every few seconds.
    pub fn default_current_version(&self) -> Result<u32, String> {
        self.current_keks.current_version(self.provider(), None)
    }

    /// Shallow re-key of one VM home (see [`VmHome::rekey`]); status then
    /// asks the providers afresh, since the VM moved to their current KEK.
    pub fn rekey(
        &self,
        vm: &VmHome,
        providers: &ProviderSet,
    ) -> Result<RekeyOutcome, DatastoreError> {
        let outcome = vm.rekey(providers);
        self.current_keks.forget();
        outcome
    }

    /// Drops the cached keys of every VM home without open files, and the
    /// providers' cached KEKs (as a host reboot empties its key cache).
    /// Returns the names (escaped) flushed and kept (files open).
    pub fn flush_keys(&self) -> (Vec<String>, Vec<String>) {
        crate::keys::KeyProvider::forget_cached(&*self.provider);
        let (mut flushed, mut kept) = (Vec::new(), Vec::new());
        for vm in self.loaded_vms() {
            let name = vm.display_name();
            if vm.flush_keys() {
                flushed.push(name);
            } else {
                kept.push(name);
            }
        }
        flushed.sort();
        kept.sort();
        (flushed, kept)
    }

    /// Shallow re-key of every VM home, as one batch (see
    /// [`rekey_batch`](super::rekey_batch)); one result per VM.
    pub fn rekey_all(&self) -> Result<Vec<VmRekeyResult>, DatastoreError> {
        let vms = self.scan_vm_homes()?;
        let results = rekey_batch::rekey_each(
            &vms,
            &self.provider,
            &self.sequences,
            |vm, provider, sequences| (vm.name(), vm.rekey_with(provider, sequences)),
        );
        self.current_keks.forget();
        Ok(results)
    }
}

/// Names of the subdirectories of `datastore`, sorted: the candidates for
/// VM homes. A symlink is never one (FORMAT.md §1), so only entries that
/// are directories themselves count.
pub fn subdirectory_names(datastore: &std::path::Path) -> std::io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = std::fs::read_dir(datastore)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::layout::StoragePolicy;
    use crate::datastore::vm_keys::create_vm_home;
    use crate::format::content_layout::ContentLayout;
    use crate::keys::embedded::EmbeddedProvider;

    #[test]
    fn a_symlink_to_a_vm_home_is_never_one() {
        let base = tempfile::tempdir().unwrap();
        let keystore = base.path().join("ks");
        let provider = EmbeddedProvider::init(&keystore).unwrap().0;
        let root = base.path().join("ds");
        let outside = base.path().join("outside-vm");
        let policy = StoragePolicy::new_vm(false, ContentLayout::PageAligned);
        create_vm_home(&root.join("vm1"), &provider, &policy).unwrap();
        create_vm_home(&outside, &provider, &policy).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        std::os::unix::fs::symlink(root.join("vm1"), root.join("alias")).unwrap();
        let providers = Arc::new(ProviderSet::open(&keystore).unwrap());
        let datastore = Datastore::new(root, providers);
        let names: Vec<_> = datastore
            .scan_vm_homes()
            .unwrap()
            .iter()
            .map(|vm| vm.name())
            .collect();
        assert_eq!(names, vec![OsString::from("vm1")]);
        assert!(datastore.vm_home(OsStr::new("linked")).is_none());
        assert!(datastore.vm_home(OsStr::new("alias")).is_none());
        assert!(datastore.vm_home(OsStr::new("vm1")).is_some());
    }
}
