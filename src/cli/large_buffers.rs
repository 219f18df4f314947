//! Makes the mount return large freed buffers to the kernel.
//!
//! glibc serves an allocation above its mmap threshold with a mapping of
//! its own, unmapped on free. But the threshold is dynamic: each such free
//! raises it to that size (up to 32 MiB), and from then on buffers that
//! large come from the heap arenas, which keep them when freed, one arena
//! per contending thread. The mount builds multi-megabyte buffers now and
//! then (a root `.control.json` at ten thousand VM homes is 7.7 MB, read by
//! whichever FUSE worker takes the call), so its resident memory came to
//! hold a freed copy in every worker's arena: 100-104 MiB at 10,000 VM
//! homes with a file of each open, against 81-85 MiB with the threshold
//! fixed (docs/PERFORMANCE.md, "Ten thousand VM homes").
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

/// Above this many bytes an allocation gets its own mapping.
const MMAP_THRESHOLD_BYTES: usize = 4 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`], unless the
/// administrator chose one with `MALLOC_MMAP_THRESHOLD_` (which glibc has
/// then applied already). Returns whether a fixed threshold is in force.
pub fn return_to_the_kernel_when_freed() -> bool {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return true;
    }
    set_mmap_threshold(MMAP_THRESHOLD_BYTES)
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

/// Other C libraries (musl) keep no freed buffers in per-thread arenas.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(super::set_mmap_threshold(super::MMAP_THRESHOLD_BYTES));
        assert!(super::return_to_the_kernel_when_freed());
    }
}
