//! The operating system's CSPRNG (getrandom(2)).

/// Fills `buf` with random bytes.
///
/// A failure of getrandom(2) leaves no safe way to continue (we would reuse
/// nonces or produce weak keys), so it aborts the operation with a panic
/// rather than returning predictable bytes.
pub fn fill(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("getrandom(2) failed: the OS CSPRNG is unavailable");
}

/// Returns `N` random bytes.
pub fn array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}
