//! How the mount's glibc malloc keeps memory it was given back: large
//! freed buffers are returned to the kernel, and threads share a few heap
//! arenas instead of keeping one each. Both are set once, at the start of
//! `vmcryptfs mount`, before any thread starts.
//!
//! **Large buffers.** glibc serves an allocation above its mmap threshold
//! with a mapping of its own, unmapped on free. But the threshold is
//! dynamic: each such free raises it to that size (up to 32 MiB), and from
//! then on buffers that large come from the heap arenas, which keep them
//! when freed, one arena per contending thread. The mount builds
//! multi-megabyte buffers now and then (a root `.control.json` at ten
//! thousand VM homes is 7.7 MB, read by whichever FUSE worker takes the
//! call), so its resident memory came to hold a freed copy in every
//! worker's arena: 100-104 MiB at 10,000 VM homes with a file of each open,
//! against 81-85 MiB with the threshold fixed (docs/PERFORMANCE.md, "Ten
//! thousand VM homes").
//!
//! The fixed threshold, 4 MiB, sits above every buffer of the I/O path (a
//! FUSE request carries at most 1 MiB of data plus its block tags), so
//! those keep coming from the arenas as before and pay no mapping per
//! request; only the rare larger buffers are mapped and unmapped.
//!
//! Fixing the mmap threshold also stops glibc adjusting its trim threshold,
//! which would stay at 128 KiB and shrink the heap after most frees of a
//! metadata-heavy load; it is set to twice the mmap threshold, the value
//! glibc's own adjustment gives it when the mmap threshold rises to 4 MiB.
//!
//! **Arenas.** glibc gives each thread that finds the arenas busy a new
//! one, up to eight per CPU. A re-key of every VM runs on a pool of 16
//! threads (`datastore::rekey_batch`) beside the FUSE workers, so the mount
//! came to hold about twenty arenas, each keeping the small blocks its
//! threads freed for that thread's next allocations only. At 10,000 VM
//! homes that was 97-98 MiB of peak RSS against 86-91 MiB with the arenas
//! capped at one per CPU (two on this machine). The I/O path allocates
//! little per request (its buffers are per-thread and reused), so sharing
//! an arena costs it an uncontended lock in most calls.

/// Above this many bytes an allocation gets its own mapping.
const MMAP_THRESHOLD_BYTES: usize = 4 << 20;

/// Applies both settings for the mount (see the module's comment).
pub fn apply_for_the_mount() {
    return_to_the_kernel_when_freed();
    share_arenas();
}

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`], unless the
/// administrator chose one with `MALLOC_MMAP_THRESHOLD_` (which glibc has
/// then applied already). Returns whether a fixed threshold is in force.
pub fn return_to_the_kernel_when_freed() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return true;
    }
    set_mmap_threshold(MMAP_THRESHOLD_BYTES)
}

/// Caps glibc's heap arenas at one per CPU (at least two), unless the
/// administrator chose a cap with `MALLOC_ARENA_MAX` (which glibc has then
/// applied already). Returns whether a cap is in force.
pub fn share_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return true;
    }
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    set_arena_max(cpus.max(2))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold(bytes: usize) -> bool {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let trim = bytes.saturating_mul(2);
    // SAFETY: mallopt only changes a malloc parameter; it takes no pointers.
    let accepted = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    };
    if !accepted {
        log::info!(
            "glibc did not take an mmap threshold of {bytes} bytes; the mount keeps its default"
        );
    }
    accepted
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: usize) -> bool {
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes a malloc parameter; it takes no pointers.
    let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 };
    if !accepted {
        log::info!("glibc did not take a cap of {arenas} heap arenas; the mount keeps its default");
    }
    accepted
}

/// Other C libraries (musl) keep no freed buffers in per-thread arenas.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) -> bool {
    false
}

/// Other C libraries (musl) have no per-thread arenas to cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(super::set_mmap_threshold(super::MMAP_THRESHOLD_BYTES));
        assert!(super::return_to_the_kernel_when_freed());
    }

    #[test]
    fn glibc_takes_the_arena_cap() {
        assert!(super::set_arena_max(2));
        assert!(super::share_arenas());
    }
}
