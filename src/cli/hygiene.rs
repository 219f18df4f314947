//! What every command does first, before it loads any key: no core dumps,
//! not dumpable, and a private umask.
//!
//! A core file of a process that holds a master key, a KEK or DEKs is a
//! copy of them on disk; a dumpable process can be read through `/proc` or
//! ptrace by other processes of its user. And files a command creates
//! (sled's files in the key store, exports, temp files) must not be
//! readable by others while their final mode is not yet set. So `run`
//! calls [`harden_process`] before anything else. The mount daemon later
//! sets umask 0 for the files it creates on behalf of callers (see
//! `mount_cmd::serve`).

use std::sync::OnceLock;

use rustix::fs::Mode;
use rustix::process::{
    set_dumpable_behavior, setrlimit, umask, DumpableBehavior, Resource, Rlimit,
};

/// The umask every command runs under.
pub const PRIVATE_UMASK: u32 = 0o077;

/// The umask the command was started with, before [`harden_process`].
static CALLER_UMASK: OnceLock<Mode> = OnceLock::new();

/// Disables core dumps (`RLIMIT_CORE` 0), clears the dumpable flag, and
/// sets the umask to [`PRIVATE_UMASK`]. Failures are logged, not fatal: a
/// kernel or sandbox that refuses them should not lock an operator out.
pub fn harden_process() {
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, no_core) {
        log::warn!("could not disable core dumps (RLIMIT_CORE): {e}");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        log::warn!("could not clear the dumpable flag: {e}");
    }
    let caller = umask(Mode::from_raw_mode(PRIVATE_UMASK));
    let _ = CALLER_UMASK.set(caller);
}

/// The mode a new directory gets under the umask the caller started the
/// command with (as `mkdir` would have given it): for directories the
/// operator asked for and expects to use, such as a new VM home.
pub fn caller_dir_mode() -> u32 {
    let umask = CALLER_UMASK.get().map_or(0o022, |m| m.as_raw_mode());
    0o777 & !umask
}
