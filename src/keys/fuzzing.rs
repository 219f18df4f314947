//! Entry points for the fuzz targets of the key store's own parsers
//! (`fuzz/fuzz_targets/backup_parse.rs`, `master_key_parse.rs`): a backup
//! file given to `provider import` and a `master.key` are input this code
//! reads, so each parser must never panic, whatever the bytes. Nothing here
//! returns a key: only whether the input parsed.

/// Parses `text` as a key store backup; if it parses, its re-encoding
/// must parse to the same text again (one encoding per backup).
#[doc(hidden)]
pub fn backup_parse(text: &str) -> bool {
    super::embedded::backup::parses_and_round_trips(text)
}

/// Parses `contents` as a `master.key` file.
#[doc(hidden)]
pub fn master_key_parse(contents: &[u8]) -> bool {
    super::master_key::parse(contents).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_accept_good_input_and_refuse_bad() {
        let good_key = format!("vmcryptfs-master-key v1\n{}\n", "ab".repeat(32));
        assert!(master_key_parse(good_key.as_bytes()));
        assert!(!master_key_parse(b"vmcryptfs-master-key v1\nzz\n"));
        let dir = tempfile::tempdir().unwrap();
        let provider = crate::keys::embedded::EmbeddedProvider::init(&dir.path().join("ks"))
            .unwrap()
            .0;
        provider.export(&dir.path().join("backup")).unwrap();
        let exported = std::fs::read_to_string(dir.path().join("backup")).unwrap();
        assert!(backup_parse(&exported));
        assert!(!backup_parse(&exported.replacen("kek: 1", "kek: x", 1)));
        assert!(!backup_parse("not a backup"));
        assert!(!backup_parse(""));
    }
}
