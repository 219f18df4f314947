//! [`KmipProvider`]: KEKs that live in a KMIP key management server.
//!
//! Each KEK version is one AES-256 symmetric key on the server, named
//! `<series>-v<N>` and placed in Object Group `<series>`; the series is the
//! `kek_id` recorded in bundles. A version is identified by the KMIP
//! Unique Identifier this host recorded for it (when it created the
//! version, at its first use of the provider, or when an administrator
//! accepted it; see [`known_versions`](super::known_versions)), never by
//! its name alone: any identity that may create keys can name one
//! `<series>-v<N>`. The current version is the highest Active recorded
//! one.
//!
//! Wrapping (`wrap = server`, the default) is a KMIP Encrypt with AES-GCM,
//! our random 96-bit nonce and the bundle's wrap AAD; the KEK never leaves
//! the KMS. The result has the layout of
//! [`key_wrap`](crate::crypto::key_wrap): `nonce || ciphertext || tag`, 60
//! bytes. So `wrap = local` (Get the KEK and wrap on the host, as vSphere
//! hosts do, for servers without Encrypt) produces and reads exactly the
//! same bytes, and a VM can be moved between the two modes without a
//! re-key.
//!
//! Lifecycle: rotate = Create + Activate of the next version; retire =
//! Revoke (reason Superseded), after which the key is Deactivated; destroy
//! = Revoke if still Active, then Destroy. Many servers (PyKMIP among them)
//! refuse Decrypt with a Deactivated key although the spec allows it; a
//! retired version is then unwrapped with Get and a local unwrap, which is
//! what `wrap = local` does for every version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{KmipClient, KmipError, ObjectAttributes};
use super::config::{KmipConfig, WrapMode};
use super::known_versions::{ProviderVersions, Records};
use super::tags::{reason, state};
use super::transport::{ClientIdentity, Deadline, Endpoint, TransportError};
use crate::crypto::key_wrap::{WRAPPED_KEY_LEN, WRAP_NONCE_LEN};
use crate::crypto::secret::{Dek, Kek, KEY_LEN};
use crate::keys::fetched_keks::{unwrap_under, wrap_under, KekUse};
use crate::keys::{KekRef, KekState, KekVersionInfo, KeyProvider, ProviderError};

/// One KEK version as the KMS holds it.
#[derive(Debug, Clone)]
struct ServerVersion {
    version: u32,
    uid: String,
    attributes: ObjectAttributes,
}

/// A key provider backed by a KMIP server.
pub struct KmipProvider {
    /// Provider name recorded in bundles. Immutable.
    name: String,
    /// Server, identity, series, wrap mode and limits. Immutable.
    config: KmipConfig,
    /// The client, built on first use so that a broken certificate file of
    /// one provider does not stop commands that never use it. Set once.
    client: Mutex<Option<Arc<KmipClient>>>,
    /// Which KMIP object is each KEK version, as this host recorded it
    /// (see [`known_versions`](super::known_versions)): a version is its
    /// recorded Unique Identifier, never whatever key bears its name.
    /// Internally synchronized.
    records: Records,
}

/// `<series>-v<N>`: the KMIP Name of a KEK version.
pub fn version_name(series: &str, version: u32) -> String {
    format!("{series}-v{version}")
}

/// The version in a KMIP Name of `series`, if it is one of ours.
pub fn parse_version_name(series: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(series)?.strip_prefix("-v")?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&v| v > 0)
}

impl KmipProvider {
    /// A provider; nothing is contacted until the first key operation.
    pub fn new(name: &str, config: KmipConfig) -> Self {
        Self {
            name: name.to_owned(),
            config,
            client: Mutex::new(None),
            records: Records::in_memory(),
        }
    }

    /// The same provider, keeping its records of KEK versions in the key
    /// store `keystore` (instead of this process's memory).
    pub fn recording_in(self, keystore: &std::path::Path) -> Self {
        Self {
            records: Records::in_keystore(keystore),
            ..self
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KmipConfig {
        &self.config
    }

    fn client(&self) -> Result<Arc<KmipClient>, ProviderError> {
        let mut slot = self.client.lock().expect("KMIP client lock");
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let endpoint = Endpoint {
            server: self.config.server.clone(),
            connect_timeout: Duration::from_millis(self.config.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.config.request_timeout_ms),
        };
        let identity = ClientIdentity {
            ca: self.config.ca.clone(),
            cert: self.config.cert.clone(),
            key: self.config.key.clone(),
        };
        let client = Arc::new(
            KmipClient::new(endpoint, &identity, self.config.retries).map_err(|e| self.error(e))?,
        );
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Maps a client error to the provider error a user acts on.
    fn error(&self, err: KmipError) -> ProviderError {
        let provider = self.name.clone();
        match &err {
            KmipError::Identity(_) => ProviderError::ProviderConfig {
                provider,
                reason: err.to_string(),
            },
            KmipError::Transport {
                source: TransportError::Tls(_),
                ..
            } => ProviderError::KmsTls {
                provider,
                reason: err.to_string(),
            },
            _ if err.is_unreachable() => ProviderError::KmsUnreachable {
                provider,
                reason: err.to_string(),
            },
            _ => ProviderError::KmsRefused {
                provider,
                reason: err.to_string(),
                hint: match err.reason() {
                    Some(reason::PERMISSION_DENIED) => {
                        "; the KMS lets only a key's owner (the client certificate's identity) use it by default: hosts that share KEKs need a shared client identity or a KMS policy granting access (docs/KMIP.md)"
                    }
                    Some(reason::AUTHENTICATION_NOT_SUCCESSFUL) => {
                        "; the KMS did not accept our client certificate as a user"
                    }
                    Some(reason::OPERATION_NOT_SUPPORTED | reason::INVALID_MESSAGE) => {
                        "; if the server lacks KMIP 1.4 Encrypt/Decrypt, register it with `--wrap local`"
                    }
                    _ => "",
                },
            },
        }
    }

    fn kek_ref(&self, version: u32) -> KekRef {
        KekRef {
            provider: self.name.clone(),
            kek_id: self.config.key_series.clone(),
            version,
        }
    }

    /// The KEK versions of our series on the server that are the objects
    /// this host recorded, by version. A key that bears a version's name
    /// but is not its recorded object is left out, with a warning.
    fn server_versions(&self, deadline: &Deadline) -> Result<Vec<ServerVersion>, ProviderError> {
        let listed = self.listed_versions(deadline)?;
        let known = self.known_versions(&listed)?;
        Ok(listed
            .into_iter()
            .filter(|v| self.is_recorded(&known, v))
            .collect())
    }

    /// Whether `listed` is the object recorded for its version; warns if
    /// not, naming both objects.
    fn is_recorded(&self, known: &ProviderVersions, listed: &ServerVersion) -> bool {
        let name = version_name(&self.config.key_series, listed.version);
        match known.versions.get(&listed.version) {
            Some(uid) if *uid == listed.uid => return true,
            Some(uid) => log::warn!(
                "key provider `{}`: KMS object {} is named {name}, but KEK version {} is KMIP object {uid} on this host: ignoring {}",
                self.name, listed.uid, listed.version, listed.uid
            ),
            None => log::warn!(
                "key provider `{}`: KMS object {} named {name} is not a KEK version this host knows: ignoring it until `vmcryptfs provider accept {} {} --uid {}`",
                self.name, listed.uid, self.name, listed.version, listed.uid
            ),
        }
        false
    }

    /// This host's records of the provider; at its first use, the
    /// versions `listed` holds (one object per version; a version with
    /// several objects of its name is not trusted at all).
    fn known_versions(&self, listed: &[ServerVersion]) -> Result<ProviderVersions, ProviderError> {
        let mut found: BTreeMap<u32, String> = BTreeMap::new();
        let mut ambiguous = Vec::new();
        for v in listed {
            if found.insert(v.version, v.uid.clone()).is_some() {
                ambiguous.push(v.version);
            }
        }
        for version in ambiguous {
            found.remove(&version);
        }
        self.records
            .first_use(&self.name, &self.config.key_series, &found)
    }

    /// Every key of our series on the server whose name is a version's,
    /// by version: impostors included.
    fn listed_versions(&self, deadline: &Deadline) -> Result<Vec<ServerVersion>, ProviderError> {
        let client = self.client()?;
        let series = &self.config.key_series;
        let uids = client
            .locate_by_group(deadline, series)
            .map_err(|e| self.error(e))?;
        let mut versions = Vec::new();
        for uid in uids {
            let attributes = client
                .get_attributes(deadline, &uid)
                .map_err(|e| self.error(e))?;
            let Some(version) = attributes
                .name
                .as_deref()
                .and_then(|n| parse_version_name(series, n))
            else {
                continue;
            };
            versions.push(ServerVersion {
                version,
                uid,
                attributes,
            });
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    fn current_of(&self, versions: &[ServerVersion]) -> Result<u32, ProviderError> {
        versions
            .iter()
            .rev()
            .find(|v| v.attributes.state == Some(state::ACTIVE))
            .map(|v| v.version)
            .ok_or_else(|| ProviderError::KmsRefused {
                provider: self.name.clone(),
                reason: format!(
                    "the KMS at {} holds no Active key named {}-vN",
                    self.config.server, self.config.key_series
                ),
                hint: "; create one with `vmcryptfs provider rotate NAME`",
            })
    }

    /// The KMIP object of a version: the one this host recorded. A version
    /// this host has not recorded is refused, naming the objects the KMS
    /// holds under its name, however many there are.
    fn uid(&self, kek: &KekRef, deadline: &Deadline) -> Result<String, ProviderError> {
        self.check_series(kek)?;
        let series = &self.config.key_series;
        let known = match self.records.get(&self.name, series)? {
            Some(known) => known,
            None => self.known_versions(&self.listed_versions(deadline)?)?,
        };
        if let Some(uid) = known.versions.get(&kek.version) {
            return Ok(uid.clone());
        }
        let name = version_name(series, kek.version);
        let found = self
            .client()?
            .locate_by_name(deadline, &name)
            .map_err(|e| self.error(e))?;
        if found.is_empty() {
            return Err(self.not_found(kek));
        }
        Err(ProviderError::KekVersionNotAccepted {
            provider: self.name.clone(),
            version: kek.version,
            name,
            candidates: format!("{} key(s) of that name: {}", found.len(), found.join(", ")),
        })
    }

    /// A version whose key the KMS does not hold (destroyed).
    fn not_found(&self, kek: &KekRef) -> ProviderError {
        ProviderError::KmsKeyNotFound {
            provider: self.name.clone(),
            server: self.config.server.clone(),
            name: version_name(&self.config.key_series, kek.version),
        }
    }

    /// [`Self::error`] for a request on version `kek`'s object: an object
    /// the KMS no longer holds is reported by the version's name.
    fn kek_error(&self, kek: &KekRef, err: KmipError) -> ProviderError {
        match err.reason() {
            Some(reason::ITEM_NOT_FOUND) => self.not_found(kek),
            _ => self.error(err),
        }
    }

    /// Records KMIP object `uid` as KEK version `version` on this host, as
    /// an administrator accepts a version another host created: checked to
    /// bear the version's name in our series first. Refused if this host
    /// already recorded another object for the version.
    pub fn accept(&self, version: u32, uid: &str) -> Result<KekRef, ProviderError> {
        let deadline = &self.deadline();
        let name = version_name(&self.config.key_series, version);
        let attributes = self
            .client()?
            .get_attributes(deadline, uid)
            .map_err(|e| self.error(e))?;
        if attributes.name.as_deref() != Some(name.as_str()) {
            return Err(ProviderError::KmsRefused {
                provider: self.name.clone(),
                reason: format!(
                    "KMS object {uid} is named {}, not {name}",
                    attributes.name.as_deref().unwrap_or("nothing")
                ),
                hint: "; give the identifier that `provider rotate` printed on the host that created the version",
            });
        }
        self.records
            .record(&self.name, &self.config.key_series, version, uid)?;
        Ok(self.kek_ref(version))
    }

    /// The KMIP object this host recorded for `version`, if any.
    pub fn recorded_uid(&self, version: u32) -> Result<Option<String>, ProviderError> {
        Ok(self
            .records
            .get(&self.name, &self.config.key_series)?
            .and_then(|known| known.versions.get(&version).cloned()))
    }

    pub(super) fn check_series(&self, kek: &KekRef) -> Result<(), ProviderError> {
        if kek.provider != self.name {
            return Err(ProviderError::UnknownProvider {
                name: kek.provider.clone(),
            });
        }
        if kek.kek_id != self.config.key_series {
            return Err(ProviderError::ForeignKek {
                kek_id: kek.kek_id.clone(),
                store_kek_id: self.config.key_series.clone(),
            });
        }
        Ok(())
    }

    fn unwrap_locally(
        &self,
        kek: &KekRef,
        uid: &str,
        wrapped: &[u8],
        aad: &[u8],
        deadline: &Deadline,
    ) -> Result<Dek, ProviderError> {
        let key = self.fetched_kek(kek, uid, KekUse::Unwrap, deadline)?;
        unwrap_under(&key, kek, wrapped, aad)
    }

    /// Version `kek`'s key, fetched with Get, to wrap or unwrap under on
    /// this host: what `wrap = local` does for every version, and `wrap =
    /// server` for a retired one. A wrapping key must be Active: Get does
    /// not check the key's state, so we do.
    fn fetched_kek(
        &self,
        kek: &KekRef,
        uid: &str,
        usage: KekUse,
        deadline: &Deadline,
    ) -> Result<Kek, ProviderError> {
        if usage == KekUse::Wrap {
            match self.state_of(kek, uid, deadline)? {
                Some(state::ACTIVE) => {}
                other => return Err(self.not_active(kek, other)),
            }
        }
        let key = self
            .client()?
            .get_key(deadline, uid)
            .map_err(|e| self.kek_error(kek, e))?;
        Ok(Kek::from_bytes(*key))
    }

    /// [`Self::fetched_kek`] of version `kek`, for a batch that keeps what
    /// it fetched (`batch.rs`).
    pub(super) fn fetch_kek(&self, kek: &KekRef, usage: KekUse) -> Result<Kek, ProviderError> {
        let deadline = &self.deadline();
        let uid = self.uid(kek, deadline)?;
        self.fetched_kek(kek, &uid, usage, deadline)
    }

    /// A version that may not wrap: the KMS holds it in `state`.
    fn not_active(&self, kek: &KekRef, state: Option<u32>) -> ProviderError {
        ProviderError::KekNotActive {
            kek_id: kek.kek_id.clone(),
            version: kek.version,
            state: state.map_or("unknown", super::tags::state_name),
        }
    }

    fn state_of(
        &self,
        kek: &KekRef,
        uid: &str,
        deadline: &Deadline,
    ) -> Result<Option<u32>, ProviderError> {
        Ok(self
            .client()?
            .get_attributes(deadline, uid)
            .map_err(|e| self.kek_error(kek, e))?
            .state)
    }

    /// Checks that the KMS answers (KMIP DiscoverVersions).
    pub fn ping(&self) -> Result<(), ProviderError> {
        self.client()?
            .ping(&self.deadline())
            .map_err(|e| self.error(e))
    }

    /// Makes sure the series has an Active version, creating version 1 if
    /// the series is new. Used when the provider is registered.
    pub fn ensure_current(&self) -> Result<KekRef, ProviderError> {
        let deadline = self.deadline();
        let versions = self.server_versions(&deadline)?;
        match self.current_of(&versions) {
            Ok(version) => Ok(self.kek_ref(version)),
            Err(ProviderError::KmsRefused { .. }) if versions.is_empty() => {
                self.rotate_within(&deadline)
            }
            Err(err) => Err(err),
        }
    }

    /// The deadline of one provider operation starting now: every KMIP
    /// request it makes, with DNS, connects, retries and backoff, is over
    /// by then (`operation_timeout_ms`).
    fn deadline(&self) -> Deadline {
        Deadline::after(Duration::from_millis(self.config.operation_timeout_ms))
    }

    /// The version `action` (retire, destroy) is about to change, from one
    /// listing of the server: refused if it is the current version, `None`
    /// if the server does not hold it.
    fn version_to_change(
        &self,
        version: u32,
        action: &'static str,
        deadline: &Deadline,
    ) -> Result<Option<ServerVersion>, ProviderError> {
        let versions = self.server_versions(deadline)?;
        if self.current_of(&versions)? == version {
            return Err(ProviderError::CurrentKekVersion {
                kek_id: self.config.key_series.clone(),
                version,
                action,
            });
        }
        Ok(versions.into_iter().find(|v| v.version == version))
    }
}

impl KeyProvider for KmipProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn current_kek(&self) -> Result<KekRef, ProviderError> {
        let versions = self.server_versions(&self.deadline())?;
        Ok(self.kek_ref(self.current_of(&versions)?))
    }

    fn wrap_dek(&self, kek: &KekRef, dek: &Dek, aad: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let deadline = &self.deadline();
        let uid = self.uid(kek, deadline)?;
        match self.config.wrap {
            WrapMode::Server => {
                let nonce: [u8; WRAP_NONCE_LEN] = crate::crypto::random::array();
                let client = self.client()?;
                let (ciphertext, tag) =
                    match client.encrypt_gcm(deadline, &uid, dek.expose(), &nonce, aad) {
                        Ok(out) => out,
                        Err(err) if err.reason() == Some(reason::PERMISSION_DENIED) => {
                            match self.state_of(kek, &uid, deadline)? {
                                Some(state::ACTIVE) => return Err(self.error(err)),
                                other => return Err(self.not_active(kek, other)),
                            }
                        }
                        Err(err) => return Err(self.kek_error(kek, err)),
                    };
                if ciphertext.len() != KEY_LEN || tag.len() != 16 {
                    return Err(ProviderError::KmsRefused {
                        provider: self.name.clone(),
                        reason: format!(
                            "Encrypt via {} returned {} bytes and a {}-byte tag, not 32 and 16",
                            self.config.server,
                            ciphertext.len(),
                            tag.len()
                        ),
                        hint: "",
                    });
                }
                let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ciphertext);
                out.extend_from_slice(&tag);
                Ok(out)
            }
            WrapMode::Local => Ok(wrap_under(
                &self.fetched_kek(kek, &uid, KekUse::Wrap, deadline)?,
                dek,
                aad,
            )),
        }
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, ProviderError> {
        let deadline = &self.deadline();
        let uid = self.uid(kek, deadline)?;
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(ProviderError::UnwrapFailed { kek: kek.clone() });
        }
        if self.config.wrap == WrapMode::Local {
            return self.unwrap_locally(kek, &uid, wrapped, aad, deadline);
        }
        let (nonce, rest) = wrapped.split_at(WRAP_NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(KEY_LEN);
        match self
            .client()?
            .decrypt_gcm(deadline, &uid, ciphertext, nonce, aad, tag)
        {
            Ok(plain) => {
                Dek::from_slice(&plain).ok_or(ProviderError::UnwrapFailed { kek: kek.clone() })
            }
            Err(err) => match err.reason() {
                // A tag that does not verify. PyKMIP reports it as General
                // Failure ("see the server logs"), so that counts too once
                // the key is known to be usable.
                Some(reason::CRYPTOGRAPHIC_FAILURE | reason::INVALID_FIELD) => {
                    Err(ProviderError::UnwrapFailed { kek: kek.clone() })
                }
                Some(reason::GENERAL_FAILURE)
                    if self.state_of(kek, &uid, deadline)? == Some(state::ACTIVE) =>
                {
                    log::warn!(
                        "KEK {kek}: {err}; taking it as a wrapped DEK that does not authenticate"
                    );
                    Err(ProviderError::UnwrapFailed { kek: kek.clone() })
                }
                Some(reason::PERMISSION_DENIED) => match self.state_of(kek, &uid, deadline)? {
                    Some(state::DEACTIVATED) => {
                        log::info!(
                            "KEK {kek} is retired and the KMS refuses Decrypt with it; unwrapping with the fetched key instead"
                        );
                        self.unwrap_locally(kek, &uid, wrapped, aad, deadline)
                    }
                    _ => Err(self.error(err)),
                },
                _ => Err(self.kek_error(kek, err)),
            },
        }
    }

    fn list_versions(&self) -> Result<Vec<KekVersionInfo>, ProviderError> {
        let versions = self.server_versions(&self.deadline())?;
        let current = self.current_of(&versions).ok();
        let highest = versions.last().map_or(0, |v| v.version);
        let mut infos = Vec::new();
        for version in 1..=highest {
            let found = versions.iter().find(|v| v.version == version);
            let state = match found.and_then(|v| v.attributes.state) {
                Some(state::ACTIVE) => KekState::Active,
                Some(state::DEACTIVATED | state::COMPROMISED) => KekState::Retired,
                // Pre-Active: a rotation stopped between Create and
                // Activate; the next rotate activates it.
                Some(state::PRE_ACTIVE) => continue,
                // Gone from the server (PyKMIP deletes destroyed keys) or
                // in a Destroyed state.
                _ => KekState::Destroyed,
            };
            infos.push(KekVersionInfo {
                version,
                state,
                created_unix: found
                    .and_then(|v| v.attributes.initial_date)
                    .map_or(0, |d| d.max(0) as u64),
                current: Some(version) == current,
            });
        }
        Ok(infos)
    }

    fn rotate(&self) -> Result<KekRef, ProviderError> {
        self.rotate_within(&self.deadline())
    }

    fn retire(&self, version: u32) -> Result<(), ProviderError> {
        let deadline = &self.deadline();
        let found = self
            .version_to_change(version, "retired", deadline)?
            .ok_or_else(|| ProviderError::UnknownKekVersion {
                kek_id: self.config.key_series.clone(),
                version,
            })?;
        match found.attributes.state {
            Some(state::ACTIVE) => self
                .client()?
                .revoke(deadline, &found.uid)
                .map_err(|e| self.error(e)),
            Some(state::DEACTIVATED | state::COMPROMISED) => Ok(()),
            _ => Err(ProviderError::KekDestroyed {
                kek_id: self.config.key_series.clone(),
                version,
            }),
        }
    }

    fn destroy(&self, version: u32) -> Result<(), ProviderError> {
        let deadline = &self.deadline();
        // Already gone from the server: nothing left to destroy.
        let Some(found) = self.version_to_change(version, "destroyed", deadline)? else {
            return Ok(());
        };
        let client = self.client()?;
        if found.attributes.state == Some(state::ACTIVE) {
            client
                .revoke(deadline, &found.uid)
                .map_err(|e| self.error(e))?;
        }
        client
            .destroy(deadline, &found.uid)
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    fn batch(self: Arc<Self>) -> Option<Arc<dyn KeyProvider>> {
        Some(Arc::new(super::batch::KmipBatch::new(self)))
    }
}

impl KmipProvider {
    /// [`KeyProvider::rotate`] within `deadline`.
    ///
    /// The new version's object is recorded on this host before it is
    /// activated, and numbered past every name in the series, impostors'
    /// included (a name is not an identity, so sharing one would only
    /// confuse the hosts that accept the version).
    fn rotate_within(&self, deadline: &Deadline) -> Result<KekRef, ProviderError> {
        let listed = self.listed_versions(deadline)?;
        let known = self.known_versions(&listed)?;
        let client = self.client()?;
        let highest_name = listed.last().map_or(0, |v| v.version);
        let ours = listed.iter().rev().find(|v| self.is_recorded(&known, v));
        let (version, uid) = match ours {
            // Resume a rotation that created the key but did not activate it.
            Some(last)
                if last.attributes.state == Some(state::PRE_ACTIVE)
                    && last.version == highest_name =>
            {
                (last.version, last.uid.clone())
            }
            _ => {
                let version = highest_name + 1;
                let name = version_name(&self.config.key_series, version);
                let uid = client
                    .create_aes256(deadline, &name, &self.config.key_series)
                    .map_err(|e| self.error(e))?;
                self.records
                    .record(&self.name, &self.config.key_series, version, &uid)?;
                (version, uid)
            }
        };
        client.activate(deadline, &uid).map_err(|e| self.error(e))?;
        Ok(self.kek_ref(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_round_trip_and_reject_others() {
        assert_eq!(version_name("vmcryptfs-kms", 3), "vmcryptfs-kms-v3");
        assert_eq!(
            parse_version_name("vmcryptfs-kms", "vmcryptfs-kms-v3"),
            Some(3)
        );
        assert_eq!(
            parse_version_name("vmcryptfs-kms", "vmcryptfs-kms-v12"),
            Some(12)
        );
        for other in [
            "vmcryptfs-kms-v0",
            "vmcryptfs-kms-v03",
            "vmcryptfs-kms-v",
            "vmcryptfs-kms-v3x",
            "vmcryptfs-kms-other-v3",
            "vmcryptfs-kms",
            "other-v3",
            "vmcryptfs-kms-v99999999999",
        ] {
            assert_eq!(parse_version_name("vmcryptfs-kms", other), None, "{other}");
        }
    }
}
