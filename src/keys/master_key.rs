//! The master key file, `<keystore>/master.key`: the root of trust of the
//! embedded key provider. Every KEK is stored wrapped under it, so losing it
//! loses every VM, and anyone who reads it can unwrap every KEK.
//!
//! Format (text, so an operator can print it for an offline backup):
//!
//! ```text
//! vmcryptfs-master-key v1
//! <64 lowercase hex characters>
//! ```
//!
//! with a trailing newline.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::fsutil::{create_private_file, io_error};
use super::ProviderError;
use crate::crypto::secret::{MasterKey, KEY_LEN};

/// File name of the master key inside the key store directory.
pub const MASTER_KEY_FILE_NAME: &str = "master.key";

/// First line of a v1 master key file.
const HEADER: &str = "vmcryptfs-master-key v1";
/// Length of the hex key line.
const HEX_LEN: usize = 2 * KEY_LEN;
/// Exact size of a well-formed file: header, newline, hex, newline.
const FILE_LEN: usize = HEADER.len() + 1 + HEX_LEN + 1;
/// Permission bits that must not be set on a key file.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Generates a fresh master key and writes it to `path` (O_EXCL, mode 0600,
/// file and directory fsynced). Fails if the file exists, so an existing root
/// of trust is never overwritten.
pub fn create(path: &Path) -> Result<MasterKey, ProviderError> {
    let key = MasterKey::generate();
    let contents = encode(&key);
    create_private_file(path, &contents).map_err(|err| {
        if err.kind() == io::ErrorKind::AlreadyExists {
            ProviderError::AlreadyInitialized {
                keystore: path.parent().unwrap_or(path).to_path_buf(),
            }
        } else {
            io_error(format!("creating master key file {}", path.display()))(err)
        }
    })?;
    Ok(key)
}

/// Reads the master key from `path`. Warns if group or others may read it.
pub fn load(path: &Path) -> Result<MasterKey, ProviderError> {
    let mut file = File::open(path).map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            ProviderError::MasterKeyMissing {
                path: path.to_path_buf(),
            }
        } else {
            io_error(format!("opening master key file {}", path.display()))(err)
        }
    })?;
    warn_if_exposed(path, &file);
    let contents = read_bounded(&mut file).map_err(io_error(format!(
        "reading master key file {}",
        path.display()
    )))?;
    parse(&contents).map_err(|reason| ProviderError::MasterKeyMalformed {
        path: path.to_path_buf(),
        reason,
    })
}

/// The file's bytes: header, hex key, newline. The buffer zeroizes on drop.
fn encode(key: &MasterKey) -> Zeroizing<Vec<u8>> {
    let mut hex_key = Zeroizing::new([0u8; HEX_LEN]);
    hex::encode_to_slice(key.expose(), hex_key.as_mut())
        .expect("a 32-byte key is exactly 64 hex characters");
    // Reserve the final size up front so the buffer never reallocates and
    // leaves an unzeroized copy of the key behind in freed memory.
    let mut out = Zeroizing::new(Vec::with_capacity(FILE_LEN));
    out.extend_from_slice(HEADER.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(hex_key.as_ref());
    out.push(b'\n');
    out
}

/// Reads at most one byte more than a well-formed file, so a huge or wrong
/// file is rejected without reading it all, into a zeroizing buffer that is
/// sized up front (no reallocation copies).
fn read_bounded(file: &mut File) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut contents = Zeroizing::new(Vec::with_capacity(FILE_LEN + 1));
    file.take(FILE_LEN as u64 + 1).read_to_end(&mut contents)?;
    Ok(contents)
}

/// Parses the file contents. The error explains what is wrong without ever
/// quoting the contents (they may be a key).
pub(crate) fn parse(contents: &[u8]) -> Result<MasterKey, String> {
    let rest = contents
        .strip_prefix(HEADER.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"\n"))
        .ok_or_else(|| format!("the first line must be `{HEADER}`"))?;
    if contents.len() > FILE_LEN {
        return Err("unexpected data after the key line".into());
    }
    let hex_line = rest
        .strip_suffix(b"\n")
        .ok_or("the key line must end with a newline")?;
    if hex_line.len() != HEX_LEN || hex_line.contains(&b'\n') {
        return Err(format!(
            "the second line must be {HEX_LEN} hex characters and the last line of the file"
        ));
    }
    if !hex_line
        .iter()
        .all(|&c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err("the key line must contain only lowercase hex characters (0-9, a-f)".into());
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_line, key.as_mut()).map_err(|_| "the key line is not valid hex")?;
    Ok(MasterKey::from_bytes(*key))
}

/// A master key readable by group or others is a leak waiting to happen, but
/// refusing to start would lock the operator out of their VMs; so warn.
fn warn_if_exposed(path: &Path, file: &File) {
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode();
        if mode & GROUP_OTHER_BITS != 0 {
            log::warn!(
                "master key file {} has mode {:03o}: group/other can access it; run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join(MASTER_KEY_FILE_NAME)
    }

    fn assert_malformed(contents: &[u8], expected_reason: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir);
        std::fs::write(&path, contents).unwrap();
        match load(&path) {
            Err(ProviderError::MasterKeyMalformed { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains(expected_reason), "{reason}");
            }
            other => panic!("expected MasterKeyMalformed, got {other:?}"),
        }
    }

    #[test]
    fn create_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir);
        let created = create(&path).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(created.expose(), loaded.expose());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("vmcryptfs-master-key v1\n"));
        assert!(text.ends_with('\n'));
        assert_eq!(text.len(), FILE_LEN);
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir);
        create(&path).unwrap();
        assert!(matches!(
            create(&path),
            Err(ProviderError::AlreadyInitialized { .. })
        ));
    }

    #[test]
    fn missing_file_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&key_path(&dir)).unwrap_err();
        assert!(matches!(err, ProviderError::MasterKeyMissing { .. }));
        assert!(err.to_string().contains("restore it from your backup"));
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        let good_hex = "ab".repeat(KEY_LEN);
        assert_malformed(b"", "first line");
        assert_malformed(
            format!("wrong header\n{good_hex}\n").as_bytes(),
            "first line",
        );
        assert_malformed(format!("{HEADER}\n{good_hex}").as_bytes(), "newline");
        assert_malformed(format!("{HEADER}\nabcd\n").as_bytes(), "64 hex");
        assert_malformed(
            format!("{HEADER}\n{good_hex}\nextra\n").as_bytes(),
            "after the key line",
        );
        let upper = "AB".repeat(KEY_LEN);
        assert_malformed(format!("{HEADER}\n{upper}\n").as_bytes(), "lowercase");
        let not_hex = "zz".repeat(KEY_LEN);
        assert_malformed(format!("{HEADER}\n{not_hex}\n").as_bytes(), "lowercase");
    }

    #[test]
    fn malformed_message_never_quotes_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir);
        let secretish = "cd".repeat(KEY_LEN + 1);
        std::fs::write(&path, format!("{HEADER}\n{secretish}\n")).unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(!message.contains("cdcd"), "{message}");
    }

    #[test]
    fn loose_permissions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir);
        let created = create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&path).unwrap().expose(), created.expose());
    }
}
