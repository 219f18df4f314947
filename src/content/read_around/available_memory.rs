//! How much memory the mount's page cache could grow into: the kernel's
//! `MemAvailable`, or less when the mount runs in a memory cgroup with a
//! limit (a systemd unit's `MemoryMax=`, a container's limit).
//!
//! Why the cgroup matters: the page cache a process brings in is charged to
//! its cgroup and reclaimed at the cgroup's limit, however much memory the
//! host has free. A file that fits in `MemAvailable` but not under the
//! mount's limit would have its read-around windows evicted before they
//! are read again, which is the bet [`super::Governor`] must not place.
//!
//! Each level of the mount's cgroup path, from its own cgroup up to the
//! root of the hierarchy, has its own limit, so the headroom is the
//! smallest over them. At each level the headroom is the limit less what
//! is charged, plus the file cache charged there (reclaimable, as
//! `MemAvailable` counts it), never more than the limit. cgroup v2
//! (`memory.max`, `memory.current`, `file` of `memory.stat`) and v1
//! (`memory.limit_in_bytes`, `memory.usage_in_bytes`, `total_cache`) are
//! both read; a level whose files are missing or unreadable is skipped.

use std::path::{Path, PathBuf};

/// Bytes the page cache could grow into, or `None` when `/proc/meminfo`
/// cannot be read.
pub(super) fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = mem_available(&meminfo)?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = Path::new("/sys/fs/cgroup");
    // A hybrid host mounts the v2 hierarchy below the v1 controllers.
    let unified = root.join("unified");
    let v2_base = if unified.is_dir() { &unified } else { root };
    let headroom = memory_cgroup_levels(&own, &root.join("memory"), v2_base)
        .into_iter()
        .filter_map(|level| level.headroom(|name| std::fs::read_to_string(name).ok()))
        .min();
    Some(headroom.map_or(available, |h| h.min(available)))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Which cgroup interface a level's files follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One directory of the mount's memory cgroup path.
#[derive(Debug, PartialEq, Eq)]
struct Level {
    dir: PathBuf,
    version: Version,
}

/// The directories of the memory cgroup named in `proc_self_cgroup` (the
/// text of `/proc/self/cgroup`), from the process's own up to the root of
/// its hierarchy, mounted at `v1_base` (the v1 memory controller) or
/// `v2_base` (the unified hierarchy). A v1 memory controller is
/// preferred when both appear: on a hybrid host (systemd's hybrid mode,
/// and the Firecracker guests this project is tested on) the v2 hierarchy
/// carries no memory controller.
fn memory_cgroup_levels(proc_self_cgroup: &str, v1_base: &Path, v2_base: &Path) -> Vec<Level> {
    let mut v1 = None;
    let mut v2 = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    let (base, path, version) = match (v1, v2) {
        (Some(path), _) => (v1_base, path, Version::V1),
        (None, Some(path)) => (v2_base, path, Version::V2),
        (None, None) => return Vec::new(),
    };
    // The path comes from the kernel, but it is joined below a fixed base
    // and only read from, so a ".." in it could at worst name another
    // cgroup's files; none is accepted.
    let relative = path.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return Vec::new();
    }
    let leaf = base.join(relative);
    leaf.ancestors()
        .take_while(|dir| dir.starts_with(base))
        .map(|dir| Level {
            dir: dir.to_path_buf(),
            version,
        })
        .collect()
}

impl Level {
    /// The level's headroom in bytes, with `read` giving a file's text;
    /// `None` when it has no limit or its files cannot be read.
    fn headroom(&self, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
        let (limit, usage, cache_key) = match self.version {
            Version::V2 => ("memory.max", "memory.current", "file"),
            Version::V1 => (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_cache",
            ),
        };
        let number =
            |name: &str| -> Option<u64> { read(&self.dir.join(name))?.trim().parse().ok() };
        // v2 writes "max" for no limit, which does not parse; v1 writes a
        // page-rounded i64::MAX, which no machine has.
        let limit = number(limit).filter(|&l| l < 1 << 60)?;
        let usage = number(usage)?;
        let stat = read(&self.dir.join("memory.stat")).unwrap_or_default();
        let cache = stat
            .lines()
            .find_map(|l| {
                l.strip_prefix(cache_key)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64);
        Some(limit.saturating_sub(usage).saturating_add(cache).min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo = "MemTotal:       24668168 kB\nMemFree:         1203004 kB\nMemAvailable:   20000000 kB\nBuffers: 1 kB\n";
        assert_eq!(mem_available(meminfo), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn the_levels_run_from_the_own_cgroup_to_the_root() {
        let levels = |text: &str| {
            memory_cgroup_levels(
                text,
                Path::new("/sys/fs/cgroup/memory"),
                Path::new("/sys/fs/cgroup"),
            )
        };
        let v2 = levels("0::/system.slice/vmcryptfs.service\n");
        assert_eq!(
            v2,
            [
                "/sys/fs/cgroup/system.slice/vmcryptfs.service",
                "/sys/fs/cgroup/system.slice",
                "/sys/fs/cgroup",
            ]
            .map(|dir| Level {
                dir: dir.into(),
                version: Version::V2
            })
        );
        // A hybrid host: v1's memory controller wins over the empty v2 line.
        let hybrid = "5:devices:/\n4:memory:/process_api/abc\n0::/\n";
        let hybrid_levels = levels(hybrid);
        assert_eq!(hybrid_levels.len(), 3);
        assert_eq!(
            hybrid_levels[0].dir,
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(hybrid_levels[2].dir, Path::new("/sys/fs/cgroup/memory"));
        assert!(hybrid_levels.iter().all(|l| l.version == Version::V1));
        // Combined controllers, as some hosts mount them.
        assert_eq!(levels("3:cpu,memory:/a\n").len(), 2);
        // Nothing to read, and nothing read outside the hierarchy.
        assert!(levels("").is_empty());
        assert!(levels("1:cpu:/x\n").is_empty());
        assert!(levels("0::/../../etc\n").is_empty());
    }

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        move |path| map.get(path).cloned()
    }

    #[test]
    fn headroom_is_the_limit_less_what_is_charged_plus_file_cache() {
        let level = Level {
            dir: "/cg/a".into(),
            version: Version::V2,
        };
        let read = files(&[
            ("/cg/a/memory.max", "1073741824\n"),
            ("/cg/a/memory.current", "805306368\n"),
            (
                "/cg/a/memory.stat",
                "anon 100\nfile 134217728\nfile_mapped 5\n",
            ),
        ]);
        assert_eq!(level.headroom(read), Some((256 + 128) << 20));
        // All of it cache: never more than the limit.
        let read = files(&[
            ("/cg/a/memory.max", "100\n"),
            ("/cg/a/memory.current", "100\n"),
            ("/cg/a/memory.stat", "file 500\n"),
        ]);
        assert_eq!(level.headroom(read), Some(100));
        // No limit, or nothing to read: no headroom of its own.
        let read = files(&[
            ("/cg/a/memory.max", "max\n"),
            ("/cg/a/memory.current", "1\n"),
        ]);
        assert_eq!(level.headroom(read), None);
        assert_eq!(level.headroom(files(&[])), None);
        // Charged over the limit (v1 allows it briefly): no room, no panic.
        let read = files(&[
            ("/cg/a/memory.max", "10\n"),
            ("/cg/a/memory.current", "20\n"),
        ]);
        assert_eq!(level.headroom(read), Some(0));
    }

    #[test]
    fn v1_reads_its_own_files_and_ignores_its_no_limit_value() {
        let level = Level {
            dir: "/cg/m".into(),
            version: Version::V1,
        };
        let read = files(&[
            ("/cg/m/memory.limit_in_bytes", "2147483648\n"),
            ("/cg/m/memory.usage_in_bytes", "2147483648\n"),
            ("/cg/m/memory.stat", "cache 1\ntotal_cache 1073741824\n"),
        ]);
        assert_eq!(level.headroom(read), Some(1 << 30));
        let read = files(&[
            ("/cg/m/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/cg/m/memory.usage_in_bytes", "1\n"),
        ]);
        assert_eq!(level.headroom(read), None);
    }

    #[test]
    fn this_machine_has_some_memory_available() {
        let available = available_bytes().unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(available > 0 && available <= mem_available(&meminfo).unwrap() + (64 << 20));
    }
}
