//! Where the embedded key store lives by default.
//!
//! Root gets a system-wide store (mount helpers started by init systems run
//! as root and need a fixed place); everyone else gets a per-user store under
//! the XDG data directory, so an unprivileged user never needs write access
//! to /var/lib.

use std::ffi::OsString;
use std::path::PathBuf;

/// The key store directory of root.
pub const SYSTEM_KEYSTORE_DIR: &str = "/var/lib/vmcryptfs";

/// Name of the per-user key store directory under the XDG data directory.
const USER_KEYSTORE_NAME: &str = "vmcryptfs";

/// Neither `XDG_DATA_HOME` nor `HOME` gives a place for a user's key store.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot determine the key store directory: neither XDG_DATA_HOME nor HOME is set to an absolute path; pass --keystore DIR or set VMCRYPTFS_KEYSTORE")]
pub struct NoKeystoreDir;

/// The default key store directory: [`SYSTEM_KEYSTORE_DIR`] for root (euid
/// 0), else `$XDG_DATA_HOME/vmcryptfs`, else `$HOME/.local/share/vmcryptfs`.
pub fn default_keystore_dir() -> Result<PathBuf, NoKeystoreDir> {
    resolve(
        rustix::process::geteuid().is_root(),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

/// The pure decision behind [`default_keystore_dir`], so it can be tested
/// without touching the process environment (tests run in parallel threads).
fn resolve(
    is_root: bool,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, NoKeystoreDir> {
    if is_root {
        return Ok(PathBuf::from(SYSTEM_KEYSTORE_DIR));
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be
    // ignored; a relative HOME would make the store depend on the cwd.
    if let Some(xdg) = absolute(xdg_data_home) {
        return Ok(xdg.join(USER_KEYSTORE_NAME));
    }
    if let Some(home) = absolute(home) {
        return Ok(home.join(".local/share").join(USER_KEYSTORE_NAME));
    }
    Err(NoKeystoreDir)
}

fn absolute(value: Option<OsString>) -> Option<PathBuf> {
    value.map(PathBuf::from).filter(|path| path.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(value: &str) -> Option<OsString> {
        Some(OsString::from(value))
    }

    #[test]
    fn root_uses_system_dir_regardless_of_env() {
        let dir = resolve(true, os("/x"), os("/home/u")).unwrap();
        assert_eq!(dir, PathBuf::from("/var/lib/vmcryptfs"));
    }

    #[test]
    fn user_prefers_xdg_data_home() {
        let dir = resolve(false, os("/data"), os("/home/u")).unwrap();
        assert_eq!(dir, PathBuf::from("/data/vmcryptfs"));
    }

    #[test]
    fn user_falls_back_to_home() {
        let dir = resolve(false, None, os("/home/u")).unwrap();
        assert_eq!(dir, PathBuf::from("/home/u/.local/share/vmcryptfs"));
        let dir = resolve(false, os("relative"), os("/home/u")).unwrap();
        assert_eq!(dir, PathBuf::from("/home/u/.local/share/vmcryptfs"));
    }

    #[test]
    fn user_without_any_location_is_told_what_to_pass() {
        let err = resolve(false, None, os("")).unwrap_err();
        assert_eq!(err, NoKeystoreDir);
        assert!(err.to_string().contains("--keystore"), "{err}");
    }
}
