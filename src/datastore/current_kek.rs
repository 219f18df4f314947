//! What status shows as a provider's current KEK version, asked of the
//! provider at most once per KEK series every few seconds.
//!
//! Every read of a `.control`, `.control.json` or the root summary shows,
//! per VM, the current version of the provider that wraps it (to say
//! `needs-rekey`). For a KMIP provider each answer is a round trip to the
//! KMS, so an unprivileged reader polling a status file, or a monitoring
//! loop over many VMs, would otherwise turn into a stream of KMS requests
//! (issue 22). Answers, failures included, are kept for [`CURRENT_KEK_TTL`];
//! a re-key through this mount forgets them all, because it has just moved
//! VMs to what the provider now calls current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::keys::{KekRef, KeyProvider};

/// How long an answer is shown before the provider is asked again. A
/// rotation by another process (`vmcryptfs provider rotate`) shows in
/// status after at most this long.
pub const CURRENT_KEK_TTL: Duration = Duration::from_secs(5);

/// Which answer: the current KEK for bundles of this (provider, kek_id),
/// or `None` for the default provider's (the root summary, and a VM whose
/// bundle did not parse).
type SeriesKey = Option<(String, String)>;

/// One answer and when it was asked; `None` until first asked.
type Answer = Option<(Instant, Result<u32, String>)>;

/// Current KEK versions by KEK series, each kept for [`CURRENT_KEK_TTL`].
#[derive(Default)]
pub struct CurrentKekCache {
    /// One slot per series. The map's lock is held only to find or add a
    /// slot; a slot's own lock is held while its provider is asked, so
    /// concurrent readers of one series wait for that one answer instead
    /// of each asking, and readers of other series are not held up.
    slots: Mutex<HashMap<SeriesKey, Arc<Mutex<Answer>>>>,
}

impl CurrentKekCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current KEK version for bundles wrapped under `kek` (or the
    /// default provider's with `None`), or the provider's error as text.
    pub fn current_version(
        &self,
        provider: &dyn KeyProvider,
        kek: Option<&KekRef>,
    ) -> Result<u32, String> {
        let key = kek.map(|k| (k.provider.clone(), k.kek_id.clone()));
        let slot = self
            .slots
            .lock()
            .expect("current KEK slots lock")
            .entry(key)
            .or_default()
            .clone();
        let mut answer = slot.lock().expect("current KEK slot lock");
        if let Some((asked, result)) = &*answer {
            if asked.elapsed() < CURRENT_KEK_TTL {
                return result.clone();
            }
        }
        let result = match kek {
            Some(kek) => provider.current_kek_for(kek),
            None => provider.current_kek(),
        }
        .map(|current| current.version)
        .map_err(|err| err.to_string());
        *answer = Some((Instant::now(), result.clone()));
        result
    }

    /// Forgets every answer: the next status read asks again.
    pub fn forget(&self) {
        self.slots.lock().expect("current KEK slots lock").clear();
    }

    /// The answers for one status read, through `provider`.
    pub fn for_read<'a>(&'a self, provider: &'a dyn KeyProvider) -> ReadVersions<'a> {
        ReadVersions {
            cache: self,
            provider,
            default: None,
            by_series: HashMap::new(),
        }
    }
}

/// The current KEK versions of one status read: each series is asked of
/// the cache once, and every VM home of it shows that one answer. A read
/// of ten thousand VM homes took the cache's locks and built a key of two
/// strings for each; here a series already answered is found by borrowed
/// names.
pub struct ReadVersions<'a> {
    cache: &'a CurrentKekCache,
    provider: &'a dyn KeyProvider,
    /// The default provider's answer, once asked.
    default: Option<Result<u32, String>>,
    /// Answers by provider name, then KEK series.
    by_series: HashMap<String, HashMap<String, Result<u32, String>>>,
}

impl ReadVersions<'_> {
    /// The answer for `kek`'s series (the default provider's with `None`)
    /// if this read has it already.
    pub fn known(&self, kek: Option<&KekRef>) -> Option<Result<u32, String>> {
        match kek {
            None => self.default.clone(),
            Some(kek) => self
                .by_series
                .get(kek.provider.as_str())?
                .get(kek.kek_id.as_str())
                .cloned(),
        }
    }

    /// The answer for `kek`'s series, asked of the cache at its first need
    /// in this read (see [`CurrentKekCache::current_version`]).
    pub fn current_version(&mut self, kek: Option<&KekRef>) -> Result<u32, String> {
        if let Some(answer) = self.known(kek) {
            return answer;
        }
        let answer = self.cache.current_version(self.provider, kek);
        match kek {
            None => self.default = Some(answer.clone()),
            Some(kek) => {
                self.by_series
                    .entry(kek.provider.clone())
                    .or_default()
                    .insert(kek.kek_id.clone(), answer.clone());
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::embedded::EmbeddedProvider;

    #[test]
    fn answers_are_kept_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let cache = CurrentKekCache::new();
        assert_eq!(cache.current_version(&provider, Some(&v1)), Ok(1));
        assert_eq!(cache.current_version(&provider, None), Ok(1));
        provider.rotate().unwrap();
        // Within the TTL the provider is not asked again.
        assert_eq!(cache.current_version(&provider, Some(&v1)), Ok(1));
        assert_eq!(cache.current_version(&provider, None), Ok(1));
        cache.forget();
        assert_eq!(cache.current_version(&provider, Some(&v1)), Ok(2));
        assert_eq!(cache.current_version(&provider, None), Ok(2));
    }

    #[test]
    fn failures_are_kept_too() {
        let dir = tempfile::tempdir().unwrap();
        let (provider, v1) = EmbeddedProvider::init(dir.path()).unwrap();
        let foreign = KekRef {
            kek_id: "another-store".into(),
            ..v1.clone()
        };
        let cache = CurrentKekCache::new();
        assert_eq!(cache.current_version(&provider, Some(&v1)), Ok(1));
        std::fs::rename(
            crate::keys::embedded::kek_db_path(dir.path()),
            dir.path().join("moved"),
        )
        .unwrap();
        let err = cache.current_version(&provider, None).unwrap_err();
        assert!(err.contains("no key store"), "{err}");
        // The series asked before keeps its answer; the failure is kept.
        assert_eq!(cache.current_version(&provider, Some(&v1)), Ok(1));
        assert_eq!(cache.current_version(&provider, None), Err(err));
        assert!(cache.current_version(&provider, Some(&foreign)).is_err());
    }
}
