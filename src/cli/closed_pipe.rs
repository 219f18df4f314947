//! What a command does when its reader goes away: `vmcryptfs status --json
//! | head` must end quietly, as `ls | head` does.
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader has exited
//! fails with EPIPE and `println!` panics on it. Every command but the
//! mount therefore takes the default disposition back: the kernel ends the
//! process at that write, silently. A command stopped this way has done
//! only whole steps, each of which is crash-safe on its own (a bundle is
//! replaced atomically, a conversion resumes from its journal), so it is
//! no worse than an interrupted run. The mount keeps ignoring SIGPIPE: a
//! KMS connection that drops must give an error, not end the daemon.

/// Makes a write to a pipe without readers end this process quietly.
pub fn end_quietly_when_the_reader_goes() {
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs on
    // delivery; `signal` is unsafe only because a handler could.
    #[allow(unsafe_code)]
    let restored = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    if let Err(e) = restored {
        log::debug!("SIGPIPE stays ignored ({e}): a closed pipe ends the command with an error");
    }
}
