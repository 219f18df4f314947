//! The text form of a key store backup (`provider export` / `import`).
//!
//! ```text
//! vmcryptfs-keystore-export v1
//! keystore-id: <32 hex>
//! check: <120 hex>
//! current: <n>
//! kek: <version> <state> <created_unix> <120 hex, or `-` once destroyed>
//! ```
//!
//! KEKs stay wrapped under the master key: a backup alone unlocks nothing,
//! and the master key must be backed up (offline) separately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::record::{state_from_name, KekRecord, KeystoreId};
use crate::crypto::key_wrap::WRAPPED_KEY_LEN;
use crate::keys::ProviderError;

/// First line of a v1 backup.
const HEADER: &str = "vmcryptfs-keystore-export v1";
/// Stands for the empty key material of a destroyed version.
const NO_KEY: &str = "-";

/// The whole content of a key store, as exported.
pub(super) struct Backup {
    /// The store's id.
    pub keystore_id: KeystoreId,
    /// The master key check value.
    pub check: Vec<u8>,
    /// The current version.
    pub current: u32,
    /// Every version with its 1-based line in the backup file (0 when the
    /// backup was built from a store rather than read).
    pub records: BTreeMap<u32, (KekRecord, usize)>,
}

impl Backup {
    /// The backup text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{HEADER}");
        let _ = writeln!(out, "keystore-id: {}", hex::encode(self.keystore_id));
        let _ = writeln!(out, "check: {}", hex::encode(&self.check));
        let _ = writeln!(out, "current: {}", self.current);
        for (version, (record, _)) in &self.records {
            let wrapped = match record.wrapped.is_empty() {
                true => NO_KEY.to_string(),
                false => hex::encode(&record.wrapped),
            };
            let _ = writeln!(
                out,
                "kek: {version} {} {} {wrapped}",
                record.state.as_str(),
                record.created_unix
            );
        }
        out
    }

    /// Parses backup text read from `file` (named in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ProviderError> {
        let mut parser = Parser::new(file);
        for (index, line) in text.lines().enumerate() {
            parser.line = index + 1;
            parser.parse_line(line)?;
        }
        parser.finish()
    }
}

/// Line-by-line parse state.
struct Parser<'a> {
    file: &'a Path,
    /// The 1-based number of the line being parsed.
    line: usize,
    keystore_id: Option<KeystoreId>,
    check: Option<Vec<u8>>,
    current: Option<u32>,
    records: BTreeMap<u32, (KekRecord, usize)>,
}

impl<'a> Parser<'a> {
    fn new(file: &'a Path) -> Self {
        Self {
            file,
            line: 0,
            keystore_id: None,
            check: None,
            current: None,
            records: BTreeMap::new(),
        }
    }

    fn parse_line(&mut self, line: &str) -> Result<(), ProviderError> {
        if self.line == 1 {
            return match line == HEADER {
                true => Ok(()),
                false => Err(self.error(format!("expected `{HEADER}` (not a key store backup?)"))),
            };
        }
        let (key, value) = line
            .split_once(": ")
            .ok_or_else(|| self.error("expected `NAME: VALUE`".into()))?;
        match key {
            "keystore-id" => {
                let id = self.parse_hex_array(value, "keystore-id")?;
                self.set_once(key, id, |p| &mut p.keystore_id)
            }
            "check" => {
                let check = self.parse_hex_vec(value, WRAPPED_KEY_LEN, "check")?;
                self.set_once(key, check, |p| &mut p.check)
            }
            "current" => {
                let current = self.parse_number(value, "current")?;
                self.set_once(key, current, |p| &mut p.current)
            }
            "kek" => self.parse_kek(value),
            _ => Err(self.error(format!("unknown entry `{key}`"))),
        }
    }

    /// `<version> <state> <created_unix> <hex or ->`
    fn parse_kek(&mut self, value: &str) -> Result<(), ProviderError> {
        let fields: Vec<&str> = value.split(' ').collect();
        let [version, state, created, wrapped] = fields[..] else {
            return Err(self.error("expected `kek: VERSION STATE CREATED WRAPPED`".into()));
        };
        let version: u32 = self.parse_number(version, "KEK version")?;
        if version == 0 {
            return Err(self.error("KEK versions start at 1".into()));
        }
        let state = state_from_name(state)
            .ok_or_else(|| self.error(format!("unknown KEK state `{state}`")))?;
        let created_unix = self.parse_number(created, "creation time")?;
        let wrapped = match wrapped {
            NO_KEY => Vec::new(),
            hex_text => self.parse_hex_vec(hex_text, WRAPPED_KEY_LEN, "wrapped KEK")?,
        };
        let record = KekRecord::new(state, created_unix, wrapped).ok_or_else(|| {
            self.error(format!(
                "a {} KEK must have {}",
                state.as_str(),
                match state {
                    crate::keys::KekState::Destroyed => "`-` as its key",
                    _ => "a wrapped key, not `-`",
                }
            ))
        })?;
        if self.records.insert(version, (record, self.line)).is_some() {
            return Err(self.error(format!("KEK version {version} appears twice")));
        }
        Ok(())
    }

    fn finish(self) -> Result<Backup, ProviderError> {
        let last_line = self.line;
        let missing = |what: &str| self.error_at(last_line, format!("missing `{what}:` line"));
        if last_line == 0 {
            return Err(self.error_at(1, "the file is empty".into()));
        }
        let keystore_id = self.keystore_id.ok_or_else(|| missing("keystore-id"))?;
        let check = self.check.clone().ok_or_else(|| missing("check"))?;
        let current = self.current.ok_or_else(|| missing("current"))?;
        match self.records.get(&current) {
            Some((record, _)) if record.state == crate::keys::KekState::Active => {}
            _ => {
                return Err(self.error_at(
                    last_line,
                    format!("the current version {current} must be listed as an active `kek:`"),
                ))
            }
        }
        Ok(Backup {
            keystore_id,
            check,
            current,
            records: self.records,
        })
    }

    fn set_once<T>(
        &mut self,
        key: &str,
        value: T,
        slot: impl FnOnce(&mut Self) -> &mut Option<T>,
    ) -> Result<(), ProviderError> {
        let error = self.error(format!("`{key}` appears twice"));
        let slot = slot(self);
        if slot.is_some() {
            return Err(error);
        }
        *slot = Some(value);
        Ok(())
    }

    fn parse_number<T: std::str::FromStr>(
        &self,
        text: &str,
        what: &str,
    ) -> Result<T, ProviderError> {
        text.parse()
            .map_err(|_| self.error(format!("{what} `{text}` is not a valid number")))
    }

    fn parse_hex_vec(&self, text: &str, len: usize, what: &str) -> Result<Vec<u8>, ProviderError> {
        match hex::decode(text) {
            Ok(bytes) if bytes.len() == len => Ok(bytes),
            _ => Err(self.error(format!("{what} must be {} hex characters", 2 * len))),
        }
    }

    fn parse_hex_array<const N: usize>(
        &self,
        text: &str,
        what: &str,
    ) -> Result<[u8; N], ProviderError> {
        let bytes = self.parse_hex_vec(text, N, what)?;
        Ok(bytes.try_into().expect("length checked by parse_hex_vec"))
    }

    fn error(&self, reason: String) -> ProviderError {
        self.error_at(self.line, reason)
    }

    fn error_at(&self, line: usize, reason: String) -> ProviderError {
        ProviderError::BackupMalformed {
            file: self.file.to_path_buf(),
            line,
            reason,
        }
    }
}

/// Whether `text` parses as a backup; one that does must re-encode to a
/// text that parses to the same encoding again (one encoding per backup).
/// The property the `backup_parse` fuzz target checks.
pub(crate) fn parses_and_round_trips(text: &str) -> bool {
    let file = Path::new("fuzz-input");
    let Ok(backup) = Backup::parse(file, text) else {
        return false;
    };
    let encoded = backup.to_text();
    let again =
        Backup::parse(file, &encoded).expect("a parsed backup re-encodes to a parsable one");
    assert_eq!(again.to_text(), encoded, "backup encoding is not stable");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::MasterKey;
    use crate::keys::KekState;

    fn sample() -> Backup {
        let master = MasterKey::generate();
        let id = [3; 16];
        let active = KekRecord::generate(&master, &id, 1, 100);
        let mut records = BTreeMap::new();
        records.insert(1, (active.with_state(KekState::Destroyed), 0));
        records.insert(2, (active.with_state(KekState::Retired), 0));
        records.insert(3, (KekRecord::generate(&master, &id, 3, 200), 0));
        Backup {
            keystore_id: id,
            check: vec![9; WRAPPED_KEY_LEN],
            current: 3,
            records,
        }
    }

    fn parse_error(text: &str) -> (usize, String) {
        match Backup::parse(Path::new("/b.txt"), text) {
            Err(ProviderError::BackupMalformed { file, line, reason }) => {
                assert_eq!(file, Path::new("/b.txt"));
                (line, reason)
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("parsed malformed backup:\n{text}"),
        }
    }

    #[test]
    fn text_round_trips() {
        let backup = sample();
        let text = backup.to_text();
        assert!(text.starts_with("vmcryptfs-keystore-export v1\nkeystore-id: 0303"));
        assert!(text.contains("\nkek: 1 destroyed 100 -\n"));
        let parsed = Backup::parse(Path::new("b"), &text).unwrap();
        assert_eq!(parsed.keystore_id, backup.keystore_id);
        assert_eq!(parsed.check, backup.check);
        assert_eq!(parsed.current, 3);
        assert_eq!(parsed.records.len(), 3);
        for (version, (record, _)) in &backup.records {
            assert!(parsed.records[version].0 == *record);
        }
        assert_eq!(parsed.records[&2].1, 6, "line numbers are recorded");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        let with_line = |index: usize, replacement: &str| {
            let mut edited = lines.clone();
            edited[index] = replacement;
            edited.join("\n")
        };
        assert_eq!(parse_error(&with_line(0, "hello")).0, 1);
        let (line, reason) = parse_error(&with_line(1, "keystore-id: 12"));
        assert_eq!((line, reason.contains("32 hex")), (2, true));
        assert_eq!(parse_error(&with_line(3, "current: x")).0, 4);
        let (line, reason) = parse_error(&with_line(5, "kek: 2 sleeping 100 -"));
        assert_eq!((line, reason.contains("sleeping")), (6, true));
        assert_eq!(parse_error(&with_line(4, "kek: 1 destroyed 100 abcd")).0, 5);
        assert_eq!(parse_error(&with_line(4, "kek: 0 destroyed 100 -")).0, 5);
        assert_eq!(parse_error(&with_line(4, "kek: 1 destroyed")).0, 5);
        assert_eq!(parse_error(&with_line(2, "color: blue")).0, 3);
        let (line, reason) = parse_error(&with_line(6, lines[5]));
        assert_eq!((line, reason.contains("twice")), (7, true));
    }

    #[test]
    fn missing_entries_and_inactive_current_are_rejected() {
        let text = sample().to_text();
        let without_check: String = text
            .lines()
            .filter(|line| !line.starts_with("check:"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(parse_error(&without_check).1.contains("missing `check:`"));
        let retired_current = text.replace("current: 3", "current: 2");
        assert!(parse_error(&retired_current)
            .1
            .contains("current version 2"));
        assert_eq!(parse_error("").0, 1);
    }
}
