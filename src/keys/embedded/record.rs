//! The stored form of one KEK version, and the AADs that bind wrapped keys
//! to their key store and version.
//!
//! Record layout (value in the `kek_versions` tree, key = version u32 BE):
//! `state u8 (1 active, 2 retired, 3 destroyed) || created_unix u64 BE ||
//! wrapped KEK (60 bytes; empty once destroyed)`.

use crate::crypto::key_wrap::{self, WRAPPED_KEY_LEN};
use crate::crypto::random;
use crate::crypto::secret::{Kek, MasterKey, KEY_LEN};
use crate::keys::KekState;

/// Length of a key store id.
pub(super) const KEYSTORE_ID_LEN: usize = 16;
/// A key store's random identity; its hex is the `kek_id` of its KEKs.
pub(super) type KeystoreId = [u8; KEYSTORE_ID_LEN];

/// AAD label of the check value.
const CHECK_AAD_LABEL: &[u8] = b"vmcryptfs v1 keystore check";
/// AAD label of a wrapped KEK.
const KEK_AAD_LABEL: &[u8] = b"vmcryptfs v1 kek";
/// state byte + created_unix.
const RECORD_HEADER_LEN: usize = 1 + 8;

/// One KEK version as stored: never the plaintext KEK.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct KekRecord {
    /// Lifecycle state.
    pub state: KekState,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The KEK wrapped under the master key; empty once destroyed.
    pub wrapped: Vec<u8>,
}

impl KekRecord {
    /// A record, if `wrapped` fits `state`: destroyed records hold nothing,
    /// all others exactly one wrapped key.
    pub fn new(state: KekState, created_unix: u64, wrapped: Vec<u8>) -> Option<Self> {
        let expected_len = match state {
            KekState::Destroyed => 0,
            KekState::Active | KekState::Retired => WRAPPED_KEY_LEN,
        };
        (wrapped.len() == expected_len).then_some(Self {
            state,
            created_unix,
            wrapped,
        })
    }

    /// A fresh random KEK for `version`, active, wrapped under `master`.
    pub fn generate(master: &MasterKey, id: &KeystoreId, version: u32, now_unix: u64) -> Self {
        let kek = Kek::generate();
        Self {
            state: KekState::Active,
            created_unix: now_unix,
            wrapped: key_wrap::wrap(master.expose(), kek.expose(), &kek_aad(id, version)),
        }
    }

    /// The same record in another state. Destroying drops the wrapped key.
    pub fn with_state(&self, state: KekState) -> Self {
        let wrapped = match state {
            KekState::Destroyed => Vec::new(),
            KekState::Active | KekState::Retired => self.wrapped.clone(),
        };
        Self {
            state,
            created_unix: self.created_unix,
            wrapped,
        }
    }

    /// Unwraps the KEK; `None` if the record does not authenticate (wrong
    /// master key, record moved to another version or store, tampering) or
    /// holds no key.
    pub fn unwrap_kek(&self, master: &MasterKey, id: &KeystoreId, version: u32) -> Option<Kek> {
        let key = key_wrap::unwrap(master.expose(), &self.wrapped, &kek_aad(id, version)).ok()?;
        Some(Kek::from_bytes(*key))
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + self.wrapped.len());
        out.push(state_code(self.state));
        out.extend_from_slice(&self.created_unix.to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Parses stored bytes; `None` if they are not a valid record.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&code, rest) = bytes.split_first()?;
        let (created, wrapped) = rest.split_at_checked(8)?;
        let created_unix = u64::from_be_bytes(created.try_into().ok()?);
        Self::new(state_from_code(code)?, created_unix, wrapped.to_vec())
    }
}

/// A new check value: a random key wrapped under `master`. Only the right
/// master key unwraps it, which lets `open` tell "wrong master key" apart
/// from "corrupt KEK record".
pub(super) fn new_check_value(master: &MasterKey, id: &KeystoreId) -> Vec<u8> {
    let filler: [u8; KEY_LEN] = random::array();
    key_wrap::wrap(master.expose(), &filler, &check_aad(id))
}

/// Whether `master` is the key that made `check` for store `id`.
pub(super) fn check_value_matches(master: &MasterKey, id: &KeystoreId, check: &[u8]) -> bool {
    key_wrap::unwrap(master.expose(), check, &check_aad(id)).is_ok()
}

/// Parses a state's display name (as in [`KekState::as_str`]).
pub(super) fn state_from_name(name: &str) -> Option<KekState> {
    [KekState::Active, KekState::Retired, KekState::Destroyed]
        .into_iter()
        .find(|state| state.as_str() == name)
}

fn check_aad(id: &KeystoreId) -> Vec<u8> {
    [CHECK_AAD_LABEL, id.as_slice()].concat()
}

/// Binds a wrapped KEK to its store and version, so a record copied to
/// another version (or another store) fails to unwrap instead of silently
/// standing in for a different KEK.
fn kek_aad(id: &KeystoreId, version: u32) -> Vec<u8> {
    [KEK_AAD_LABEL, id.as_slice(), &version.to_be_bytes()].concat()
}

fn state_code(state: KekState) -> u8 {
    match state {
        KekState::Active => 1,
        KekState::Retired => 2,
        KekState::Destroyed => 3,
    }
}

fn state_from_code(code: u8) -> Option<KekState> {
    match code {
        1 => Some(KekState::Active),
        2 => Some(KekState::Retired),
        3 => Some(KekState::Destroyed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: KeystoreId = [7; KEYSTORE_ID_LEN];

    #[test]
    fn record_bytes_round_trip_in_every_state() {
        let master = MasterKey::generate();
        let active = KekRecord::generate(&master, &ID, 1, 1_700_000_000);
        for state in [KekState::Active, KekState::Retired, KekState::Destroyed] {
            let record = active.with_state(state);
            let parsed = KekRecord::from_bytes(&record.to_bytes()).unwrap();
            assert!(parsed == record, "{state:?}");
        }
        assert!(active.with_state(KekState::Destroyed).wrapped.is_empty());
    }

    #[test]
    fn malformed_record_bytes_are_rejected() {
        let master = MasterKey::generate();
        let bytes = KekRecord::generate(&master, &ID, 1, 5).to_bytes();
        assert!(KekRecord::from_bytes(&[]).is_none());
        assert!(KekRecord::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        let mut bad_state = bytes.clone();
        bad_state[0] = 9;
        assert!(KekRecord::from_bytes(&bad_state).is_none());
        let mut destroyed_with_key = bytes;
        destroyed_with_key[0] = 3;
        assert!(KekRecord::from_bytes(&destroyed_with_key).is_none());
    }

    #[test]
    fn wrapped_kek_is_bound_to_version_and_store() {
        let master = MasterKey::generate();
        let record = KekRecord::generate(&master, &ID, 2, 5);
        assert!(record.unwrap_kek(&master, &ID, 2).is_some());
        assert!(record.unwrap_kek(&master, &ID, 3).is_none());
        assert!(record
            .unwrap_kek(&master, &[8; KEYSTORE_ID_LEN], 2)
            .is_none());
        assert!(record.unwrap_kek(&MasterKey::generate(), &ID, 2).is_none());
    }

    #[test]
    fn check_value_identifies_the_master_key() {
        let master = MasterKey::generate();
        let check = new_check_value(&master, &ID);
        assert!(check_value_matches(&master, &ID, &check));
        assert!(!check_value_matches(&MasterKey::generate(), &ID, &check));
        assert!(!check_value_matches(&master, &[0; KEYSTORE_ID_LEN], &check));
    }

    #[test]
    fn state_names_parse_back() {
        for state in [KekState::Active, KekState::Retired, KekState::Destroyed] {
            assert_eq!(state_from_name(state.as_str()), Some(state));
        }
        assert_eq!(state_from_name("Active"), None);
    }
}
