//! FUSE node ids ↔ backing files.
//!
//! Nodes are keyed by the backing file's (st_dev, st_ino), so hard links
//! share one node id, and each node keeps the datastore-relative paths it is
//! known by. Virtual `.control` files get their own node per directory.
//! Node 1 is the datastore root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use fuser::BackingId;

use super::moves::Domain;
use crate::content::EncryptedFile;
use crate::control::virtual_file::VirtualFile;
use crate::datastore::vm_home::VmHome;

/// The root's node id (FUSE_ROOT_ID).
pub const ROOT_INO: u64 = 1;

/// Which part of the datastore a node is in.
#[derive(Clone)]
pub enum Area {
    /// The datastore root directory itself.
    Root,
    /// Outside any encrypted VM home: everything passes through.
    Plain,
    /// Inside (or being) an encrypted VM home.
    Vm(Arc<VmHome>),
}

impl Area {
    /// The encryption domain (renames and links across domains return
    /// EXDEV; see [`super::moves`]).
    pub fn domain(&self) -> Domain<SameVm<'_>> {
        match self {
            Area::Vm(vm) => Domain::VmHome(SameVm(vm)),
            Area::Root | Area::Plain => Domain::Clear,
        }
    }

    /// The VM home, if any.
    pub fn vm(&self) -> Option<&Arc<VmHome>> {
        match self {
            Area::Vm(vm) => Some(vm),
            _ => None,
        }
    }
}

/// A VM home, equal only to itself: two `VmHome` values are one domain
/// when they are the mount's one record of that VM home.
#[derive(Clone, Copy)]
pub struct SameVm<'a>(pub &'a Arc<VmHome>);

impl PartialEq for SameVm<'_> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(self.0, other.0)
    }
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A real file, directory or symlink in the datastore.
    Backing,
    /// A virtual `.control` file.
    Virtual(VirtualFile),
}

/// A snapshot of what the table knows about one node.
#[derive(Clone)]
pub struct NodeInfo {
    /// The node id.
    pub ino: u64,
    /// One datastore-relative path (`""` for the root), if still linked.
    pub path: Option<PathBuf>,
    /// The node's area.
    pub area: Area,
    /// Real or virtual.
    pub kind: NodeKind,
}

struct Node {
    backing: Option<(u64, u64)>,
    paths: Vec<PathBuf>,
    area: Area,
    kind: NodeKind,
    lookups: u64,
    /// Shared content state while the node is open (or being truncated),
    /// with the number of holders.
    content: Shared<EncryptedFile>,
    /// Kernel passthrough backing id while pass-through handles are open,
    /// with the number of holders.
    passthrough: Shared<BackingId>,
}

/// A value shared by all open handles of a node, with its holder count.
type Shared<T> = Option<(Arc<T>, usize)>;

/// Picks one shared-value field of a node.
type SlotOf<T> = fn(&mut Node) -> &mut Shared<T>;

impl Node {
    /// No lookups and nothing open: the node can go.
    fn is_unused(&self) -> bool {
        self.lookups == 0 && self.content.is_none() && self.passthrough.is_none()
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<(u64, u64), u64>,
    /// The nodes holding each path (almost always one; a stale node may
    /// briefly share a path with its successor). Kept in step with every
    /// node's `paths`, so an unlink finds its node without scanning the
    /// table (a scan per unlink made `rm -rf` quadratic).
    by_path: HashMap<PathBuf, Vec<u64>>,
    /// Virtual files by (directory node, which file).
    controls: HashMap<(u64, VirtualFile), u64>,
    next_ino: u64,
}

impl Inner {
    fn index_path(&mut self, path: &Path, ino: u64) {
        let holders = self.by_path.entry(path.to_path_buf()).or_default();
        if !holders.contains(&ino) {
            holders.push(ino);
        }
    }

    fn unindex_path(&mut self, path: &Path, ino: u64) {
        if let Some(holders) = self.by_path.get_mut(path) {
            holders.retain(|&h| h != ino);
            if holders.is_empty() {
                self.by_path.remove(path);
            }
        }
    }
}

/// The node table. One lock: lookups and I/O take it briefly for reading;
/// structural changes (lookup of a new node, rename, unlink, forget) write.
pub struct InodeTable {
    inner: RwLock<Inner>,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root_backing: (u64, u64)) -> Self {
        let mut inner = Inner {
            next_ino: ROOT_INO + 1,
            ..Inner::default()
        };
        inner.nodes.insert(
            ROOT_INO,
            Node {
                backing: Some(root_backing),
                paths: vec![PathBuf::new()],
                area: Area::Root,
                kind: NodeKind::Backing,
                lookups: 1,
                content: None,
                passthrough: None,
            },
        );
        inner.by_backing.insert(root_backing, ROOT_INO);
        inner.index_path(Path::new(""), ROOT_INO);
        Self {
            inner: RwLock::new(inner),
        }
    }

    /// What the table knows about `ino`.
    pub fn get(&self, ino: u64) -> Option<NodeInfo> {
        let inner = self.inner.read().expect("inode lock");
        let node = inner.nodes.get(&ino)?;
        Some(NodeInfo {
            ino,
            path: node.paths.first().cloned(),
            area: node.area.clone(),
            kind: node.kind,
        })
    }

    /// Records a lookup of a backing file at `path`, returning its node id.
    /// A new path of a known file (a hard link) is added to its paths; the
    /// area is refreshed (a directory may have just become a VM home).
    ///
    /// `still_this_file` tells whether one of the node's known paths still
    /// names this backing file. Files replaced behind the mount's back
    /// (another host, `vm encrypt`, a conversion: rename over the path)
    /// free their inode numbers, which the file system may hand to a new
    /// file; a node whose paths all name other files now is such a stale
    /// identity, and the new file gets a fresh node, so the kernel never
    /// serves one file's cached pages or attributes for another.
    pub fn remember(
        &self,
        backing: (u64, u64),
        path: &Path,
        area: Area,
        still_this_file: impl Fn(&Path) -> bool,
    ) -> u64 {
        let mut inner = self.inner.write().expect("inode lock");
        if let Some(&ino) = inner.by_backing.get(&backing) {
            let node = inner.nodes.get_mut(&ino).expect("indexed node exists");
            let mut gone = Vec::new();
            if ino != ROOT_INO {
                node.paths.retain(|p| {
                    let keep = p == path || still_this_file(p);
                    if !keep {
                        gone.push(p.clone());
                    }
                    keep
                });
            }
            let alive = ino == ROOT_INO || !node.paths.is_empty();
            for p in gone {
                inner.unindex_path(&p, ino);
            }
            if alive {
                let node = inner.nodes.get_mut(&ino).expect("indexed node exists");
                if !node.paths.iter().any(|p| p == path) {
                    node.paths.push(path.to_path_buf());
                }
                if ino != ROOT_INO {
                    node.area = area;
                    node.lookups += 1;
                }
                inner.index_path(path, ino);
                return ino;
            }
            // Every path of the old node names another file now: detach it.
            inner.by_backing.remove(&backing);
        }
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.nodes.insert(
            ino,
            Node {
                backing: Some(backing),
                paths: vec![path.to_path_buf()],
                area,
                kind: NodeKind::Backing,
                lookups: 1,
                content: None,
                passthrough: None,
            },
        );
        inner.by_backing.insert(backing, ino);
        inner.index_path(path, ino);
        ino
    }

    /// The node id of virtual file `file` in directory `dir_ino`.
    pub fn remember_virtual(&self, dir_ino: u64, area: Area, file: VirtualFile) -> u64 {
        let mut inner = self.inner.write().expect("inode lock");
        if let Some(&ino) = inner.controls.get(&(dir_ino, file)) {
            inner
                .nodes
                .get_mut(&ino)
                .expect("control node exists")
                .lookups += 1;
            return ino;
        }
        let ino = inner.next_ino;
        inner.next_ino += 1;
        inner.nodes.insert(
            ino,
            Node {
                backing: None,
                paths: Vec::new(),
                area,
                kind: NodeKind::Virtual(file),
                lookups: 1,
                content: None,
                passthrough: None,
            },
        );
        inner.controls.insert((dir_ino, file), ino);
        ino
    }

    /// The kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut inner = self.inner.write().expect("inode lock");
        let Some(node) = inner.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if !node.is_unused() {
            return;
        }
        Self::remove_node(&mut inner, ino);
    }

    /// A path was unlinked (or replaced by a rename): forget it.
    pub fn unlink_path(&self, path: &Path) {
        let mut inner = self.inner.write().expect("inode lock");
        Self::drop_path(&mut inner, path);
    }

    /// Removes `path` from every node. A node left with no path is detached
    /// from its backing identity, so that if the file system reuses the
    /// inode number for a new file, that file gets a fresh node.
    fn drop_path(inner: &mut Inner, path: &Path) {
        let holders = inner.by_path.remove(path).unwrap_or_default();
        for ino in holders {
            let Some(node) = inner.nodes.get_mut(&ino) else {
                continue;
            };
            let before = node.paths.len();
            node.paths.retain(|p| p != path);
            if before > 0 && node.paths.is_empty() {
                if let Some(backing) = node.backing {
                    inner.by_backing.remove(&backing);
                }
            }
        }
    }

    /// `from` was renamed to `to`: rewrite it and every path below it.
    pub fn rename_path(&self, from: &Path, to: &Path) {
        let mut inner = self.inner.write().expect("inode lock");
        Self::drop_path(&mut inner, to);
        let mut moved = Vec::new();
        for (&ino, node) in inner.nodes.iter_mut() {
            for path in node.paths.iter_mut() {
                if let Ok(rest) = path.strip_prefix(from) {
                    let new = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                    moved.push((ino, std::mem::replace(path, new.clone()), new));
                }
            }
            // A rewritten path may equal one the node already had.
            let mut seen = std::collections::HashSet::new();
            node.paths.retain(|p| seen.insert(p.clone()));
        }
        for (ino, old, new) in moved {
            inner.unindex_path(&old, ino);
            inner.index_path(&new, ino);
        }
    }

    /// Takes a hold on the shared content state of `ino`, creating it with
    /// `make` if the node has none. Pair with [`InodeTable::release_content`].
    pub fn acquire_content(
        &self,
        ino: u64,
        make: impl FnOnce() -> EncryptedFile,
    ) -> Option<Arc<EncryptedFile>> {
        self.acquire(ino, |node| &mut node.content, || Ok::<_, ()>(make()))
            .ok()
            .flatten()
    }

    /// Drops a hold taken by [`InodeTable::acquire_content`].
    pub fn release_content(&self, ino: u64) {
        self.release(ino, |node| &mut node.content);
    }

    /// Takes a hold on the kernel passthrough backing id of `ino` (one per
    /// inode, shared by all its handles, as the kernel requires), creating
    /// it with `make` if needed. Pair with [`InodeTable::release_passthrough`].
    pub fn acquire_passthrough(
        &self,
        ino: u64,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Option<Arc<BackingId>>> {
        self.acquire(ino, |node| &mut node.passthrough, make)
    }

    /// Drops a hold taken by [`InodeTable::acquire_passthrough`].
    pub fn release_passthrough(&self, ino: u64) {
        self.release(ino, |node| &mut node.passthrough);
    }

    /// Takes a hold on a per-node shared value, creating it if absent.
    /// `None` if the node is gone.
    fn acquire<T, E>(
        &self,
        ino: u64,
        slot: SlotOf<T>,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Option<Arc<T>>, E> {
        let mut inner = self.inner.write().expect("inode lock");
        let Some(node) = inner.nodes.get_mut(&ino) else {
            return Ok(None);
        };
        let shared = slot(node);
        if shared.is_none() {
            *shared = Some((Arc::new(make()?), 0));
        }
        let (value, holders) = shared.as_mut().expect("just filled");
        *holders += 1;
        Ok(Some(value.clone()))
    }

    /// Drops a hold on a per-node shared value; the value goes with its last
    /// holder, and the node with its last lookup and last value.
    fn release<T>(&self, ino: u64, slot: SlotOf<T>) {
        let mut inner = self.inner.write().expect("inode lock");
        let Some(node) = inner.nodes.get_mut(&ino) else {
            return;
        };
        let shared = slot(node);
        if let Some((_, holders)) = shared.as_mut() {
            *holders -= 1;
            if *holders == 0 {
                *shared = None;
            }
        }
        if node.is_unused() {
            Self::remove_node(&mut inner, ino);
        }
    }

    fn remove_node(inner: &mut Inner, ino: u64) {
        let node = inner.nodes.remove(&ino).expect("node exists");
        for path in &node.paths {
            inner.unindex_path(path, ino);
        }
        if let Some(backing) = node.backing {
            if inner.by_backing.get(&backing) == Some(&ino) {
                inner.by_backing.remove(&backing);
            }
        }
        inner.controls.retain(|_, &mut c| c != ino);
    }

    /// The node id for a directory entry, if known (for readdir's d_ino).
    pub fn known_ino(&self, backing: (u64, u64)) -> Option<u64> {
        self.inner
            .read()
            .expect("inode lock")
            .by_backing
            .get(&backing)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_share_a_node_and_renames_rewrite_paths() {
        let table = InodeTable::new((1, 2));
        let a = table.remember((1, 10), Path::new("vm/a"), Area::Plain, |_| true);
        let b = table.remember((1, 10), Path::new("vm/b"), Area::Plain, |_| true);
        assert_eq!(a, b);
        table.unlink_path(Path::new("vm/a"));
        assert_eq!(table.get(a).unwrap().path.unwrap(), PathBuf::from("vm/b"));
        let d = table.remember((1, 11), Path::new("dir"), Area::Plain, |_| true);
        let f = table.remember((1, 12), Path::new("dir/sub/f"), Area::Plain, |_| true);
        table.rename_path(Path::new("dir"), Path::new("dir2"));
        assert_eq!(table.get(d).unwrap().path.unwrap(), PathBuf::from("dir2"));
        assert_eq!(
            table.get(f).unwrap().path.unwrap(),
            PathBuf::from("dir2/sub/f")
        );
        table.forget(f, 1);
        assert!(table.get(f).is_none());
        assert_eq!(table.get(ROOT_INO).unwrap().path.unwrap(), PathBuf::new());
    }

    #[test]
    fn a_reused_inode_number_gets_a_fresh_node() {
        let table = InodeTable::new((1, 2));
        let old = table.remember((1, 50), Path::new("vm/a.nvram"), Area::Plain, |_| true);
        // a.nvram was replaced behind the mount's back and its inode number
        // now belongs to b.log: a.nvram's path no longer names it.
        let new = table.remember((1, 50), Path::new("vm/b.log"), Area::Plain, |_| false);
        assert_ne!(old, new);
        assert_eq!(
            table.get(new).unwrap().path.unwrap(),
            PathBuf::from("vm/b.log")
        );
        assert!(
            table.get(old).unwrap().path.is_none(),
            "the old node is detached"
        );
    }

    impl InodeTable {
        /// Checks that `by_path` says exactly what the nodes' paths say.
        fn assert_path_index_consistent(&self) {
            let inner = self.inner.read().unwrap();
            let mut expected: HashMap<PathBuf, Vec<u64>> = HashMap::new();
            for (&ino, node) in &inner.nodes {
                for path in &node.paths {
                    expected.entry(path.clone()).or_default().push(ino);
                }
            }
            let mut actual = inner.by_path.clone();
            for holders in expected.values_mut().chain(actual.values_mut()) {
                holders.sort_unstable();
            }
            assert_eq!(actual, expected);
        }
    }

    /// Random lookups, links, renames, unlinks and forgets; after each one
    /// the path index matches the nodes, and unlinking a path detaches the
    /// node it left without paths.
    #[test]
    fn the_path_index_follows_every_change() {
        let table = InodeTable::new((1, 2));
        let names = ["a", "b", "d", "d/x", "d/y", "e", "e/x"];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..3000 {
            let path = Path::new(names[next(names.len())]);
            let other = Path::new(names[next(names.len())]);
            match next(5) {
                0 | 1 => {
                    let file = (1, 10 + next(6) as u64);
                    let reused = next(4) == 0;
                    table.remember(file, path, Area::Plain, |_| !reused);
                }
                2 => table.unlink_path(path),
                3 => {
                    if !other.starts_with(path) {
                        table.rename_path(path, other);
                    }
                }
                _ => {
                    let ino = ROOT_INO + 1 + next(40) as u64;
                    table.forget(ino, 1);
                }
            }
            table.assert_path_index_consistent();
        }
        let file = table.remember((1, 99), Path::new("solo"), Area::Plain, |_| true);
        table.unlink_path(Path::new("solo"));
        assert!(table.get(file).unwrap().path.is_none());
        assert_eq!(
            table.known_ino((1, 99)),
            None,
            "an unlinked file is detached"
        );
    }
}
