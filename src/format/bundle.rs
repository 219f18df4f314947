//! The per-VM key bundle, `.vmcryptfs-bundle`, format versions 1 and 2.
//!
//! The bundle names the KEK that wraps the VM's DEKs and carries the wrapped
//! DEKs and the disk policy. It has no MAC of its own: each DEK is wrapped
//! with an AAD that hashes every other field (see [`KeyBundle::wrap_aad`]), so
//! the KEK authenticates the whole bundle. That works unchanged for a KMS
//! that only offers Encrypt/Decrypt and never releases the KEK.
//!
//! Layout (big-endian; docs/FORMAT.md has the table):
//! magic "VMCRYPTB" | version u16 | flags u16 | vm_id [16] | sequence u64 |
//! created u64 | updated u64 | provider (u8 len + UTF-8) |
//! kek_id (u8 len + UTF-8) | kek_version u32 | current_generation u32 |
//! [version 2 only: pattern_count u8 | pattern_count × (u8 len + ASCII)] |
//! dek_count u8 | dek_count × (generation u32 | wrapped_len u16 | wrapped).
//!
//! Version 2 adds the disk pattern ([`DiskPattern`]). A version-1 bundle
//! means `*.vmdk` only, and the encoder writes version 1 exactly when the
//! pattern is that one: re-keying a VM home made by an older build keeps it
//! readable there, and one meaning has one encoding (a version-2 bundle
//! holding `*.vmdk` alone is refused).

use sha2::{Digest, Sha256};

use super::content_layout::ContentLayout;
use super::disk_pattern::{self, DiskPattern};
use super::kek_ref::KekRef;

/// Bundle magic.
pub const MAGIC: [u8; 8] = *b"VMCRYPTB";
/// The newest version, which this build writes unless the disk pattern is
/// the version-1 meaning (module comment).
pub const VERSION: u16 = 2;
/// The version before disk patterns: disks are `*.vmdk`. Still read and
/// written.
pub const VERSION_1: u16 = 1;
/// Flag bit: the VM's disk files are encrypted too.
pub const FLAG_ENCRYPT_DISKS: u16 = 0x0001;
/// Flag bit: the VM's encrypted files use content format 2 (page-aligned);
/// clear means content format 1 (interleaved).
pub const FLAG_PAGE_ALIGNED: u16 = 0x0002;
const KNOWN_FLAGS: u16 = FLAG_ENCRYPT_DISKS | FLAG_PAGE_ALIGNED;
/// Maximum number of DEK generations in one bundle.
pub const MAX_DEKS: usize = 16;
/// Maximum length of one wrapped DEK.
pub const MAX_WRAPPED_LEN: usize = 1024;
/// Maximum provider name length.
pub const MAX_PROVIDER_LEN: usize = 64;
/// Maximum KEK id length (its length is one byte).
pub const MAX_KEK_ID_LEN: usize = 255;
/// The largest valid encoding: every field at its maximum (the layout in
/// the module comment, 17,903 bytes). A reader never reads more than this
/// of a bundle file, so a planted huge file costs nothing.
pub const MAX_ENCODED_LEN: usize = MAGIC.len()
    + 2 // version
    + 2 // flags
    + 16 // vm_id
    + 8 * 3 // sequence, created, updated
    + 1
    + MAX_PROVIDER_LEN
    + 1
    + MAX_KEK_ID_LEN
    + 4 // kek_version
    + 4 // current_generation
    + 1 // pattern_count
    + disk_pattern::MAX_PATTERNS * (1 + disk_pattern::MAX_PATTERN_LEN)
    + 1 // dek_count
    + MAX_DEKS * (4 + 2 + MAX_WRAPPED_LEN);
const AAD_LABEL: &[u8] = b"vmcryptfs v1 bundle";

/// Why a bundle was rejected. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Ran out of bytes while reading a field.
    #[error("key bundle truncated while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The magic is wrong.
    #[error("not a vmcryptfs key bundle (bad magic)")]
    BadMagic,
    /// An unknown format version.
    #[error("key bundle version {0} is not supported (this build reads versions {VERSION_1} and {VERSION})")]
    UnsupportedVersion(u16),
    /// Reserved flag bits set.
    #[error("key bundle has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// A field's value is out of range or malformed.
    #[error("key bundle field {field} is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Bytes left after the last field.
    #[error("key bundle has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// One wrapped DEK.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek {
    /// The DEK generation; files name it in their header.
    pub generation: u32,
    /// Provider-specific wrapped key (never plaintext).
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WrappedDek(gen {}, {} bytes)",
            self.generation,
            self.wrapped.len()
        )
    }
}

/// A parsed key bundle. Holds no plaintext key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// The VM's random id; salts every key derived from its DEKs.
    pub vm_id: [u8; 16],
    /// Whether disk files (names matching `disk_pattern`) are encrypted
    /// (otherwise they pass through).
    pub encrypt_disks: bool,
    /// Which file names are disks; `*.vmdk` in a version-1 bundle.
    pub disk_pattern: DiskPattern,
    /// The content format of every encrypted file in the VM home.
    pub content_layout: ContentLayout,
    /// 1 at creation, incremented by every rewrite.
    pub sequence: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Time of the last rewrite, seconds since the Unix epoch.
    pub updated_unix: u64,
    /// The KEK that wraps the DEKs.
    pub kek: KekRef,
    /// The DEK generation that new files are encrypted under.
    pub current_generation: u32,
    /// Wrapped DEKs, generations strictly ascending.
    pub deks: Vec<WrappedDek>,
}

impl KeyBundle {
    /// Serializes the bundle. Fails if an invariant does not hold, so an
    /// invalid bundle is never written.
    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        self.validate()?;
        Ok(self.serialize(true))
    }

    /// The AAD binding the wrapped DEK of `generation` to every other field:
    /// SHA-256(label || body) || generation, where the body is the encoding
    /// without the wrapped DEKs.
    pub fn wrap_aad(&self, generation: u32) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update(AAD_LABEL);
        hasher.update(self.serialize(false));
        let mut aad = hasher.finalize().to_vec();
        aad.extend_from_slice(&generation.to_be_bytes());
        aad
    }

    /// The version this bundle is written in: 1 exactly when its disk
    /// pattern is the version-1 meaning.
    pub fn version(&self) -> u16 {
        if self.disk_pattern.is_legacy() {
            VERSION_1
        } else {
            VERSION
        }
    }

    fn serialize(&self, with_wrapped: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.deks.len() * 70);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version().to_be_bytes());
        let mut flags = 0;
        if self.encrypt_disks {
            flags |= FLAG_ENCRYPT_DISKS;
        }
        if self.content_layout == ContentLayout::PageAligned {
            flags |= FLAG_PAGE_ALIGNED;
        }
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.vm_id);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.created_unix.to_be_bytes());
        out.extend_from_slice(&self.updated_unix.to_be_bytes());
        put_short_str(&mut out, &self.kek.provider);
        put_short_str(&mut out, &self.kek.kek_id);
        out.extend_from_slice(&self.kek.version.to_be_bytes());
        out.extend_from_slice(&self.current_generation.to_be_bytes());
        if self.version() == VERSION {
            out.push(self.disk_pattern.patterns().len() as u8);
            for pattern in self.disk_pattern.patterns() {
                put_short_str(&mut out, pattern);
            }
        }
        out.push(self.deks.len() as u8);
        for dek in &self.deks {
            out.extend_from_slice(&dek.generation.to_be_bytes());
            if with_wrapped {
                out.extend_from_slice(&(dek.wrapped.len() as u16).to_be_bytes());
                out.extend_from_slice(&dek.wrapped);
            }
        }
        out
    }

    fn validate(&self) -> Result<(), BundleError> {
        let invalid = |field, reason: &str| BundleError::InvalidField {
            field,
            reason: reason.to_string(),
        };
        if self.kek.provider.is_empty() || self.kek.provider.len() > MAX_PROVIDER_LEN {
            return Err(invalid("provider", "must be 1..=64 bytes"));
        }
        if self.kek.kek_id.is_empty() || self.kek.kek_id.len() > MAX_KEK_ID_LEN {
            return Err(invalid("kek_id", "must be 1..=255 bytes"));
        }
        if self.deks.is_empty() || self.deks.len() > MAX_DEKS {
            return Err(invalid("dek_count", "must be 1..=16"));
        }
        if !self
            .deks
            .windows(2)
            .all(|w| w[0].generation < w[1].generation)
        {
            return Err(invalid(
                "generation",
                "generations must be strictly ascending",
            ));
        }
        if !self
            .deks
            .iter()
            .any(|d| d.generation == self.current_generation)
        {
            return Err(invalid("current_generation", "no DEK of that generation"));
        }
        if self
            .deks
            .iter()
            .any(|d| d.wrapped.is_empty() || d.wrapped.len() > MAX_WRAPPED_LEN)
        {
            return Err(invalid("wrapped_len", "must be 1..=1024"));
        }
        Ok(())
    }

    /// The fields (docs/FORMAT.md §4.1 names) in which `other` differs
    /// from this bundle, in layout order; empty if they are equal. What a
    /// refusal to re-wrap a changed bundle names.
    pub fn differing_fields(&self, other: &KeyBundle) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut check = |differs: bool, field| {
            if differs {
                fields.push(field);
            }
        };
        check(self.encrypt_disks != other.encrypt_disks, "encrypt_disks");
        check(self.disk_pattern != other.disk_pattern, "disk_pattern");
        check(self.content_layout != other.content_layout, "page_aligned");
        check(self.vm_id != other.vm_id, "vm_id");
        check(self.sequence != other.sequence, "sequence");
        check(self.created_unix != other.created_unix, "created_unix");
        check(self.updated_unix != other.updated_unix, "updated_unix");
        check(self.kek.provider != other.kek.provider, "provider");
        check(self.kek.kek_id != other.kek.kek_id, "kek_id");
        check(self.kek.version != other.kek.version, "kek_version");
        check(
            self.current_generation != other.current_generation,
            "current_generation",
        );
        let generations = |b: &KeyBundle| b.deks.iter().map(|d| d.generation).collect::<Vec<_>>();
        check(generations(self) != generations(other), "DEK generations");
        check(
            generations(self) == generations(other) && self.deks != other.deks,
            "wrapped DEK",
        );
        fields
    }

    /// Parses and validates a bundle. Does not unwrap anything: a bundle that
    /// parses may still fail authentication at unwrap time.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take::<8>("magic")? != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = r.u16("version")?;
        if version != VERSION && version != VERSION_1 {
            return Err(BundleError::UnsupportedVersion(version));
        }
        let flags = r.u16("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(BundleError::UnknownFlags(flags));
        }
        let vm_id = r.take::<16>("vm_id")?;
        let sequence = r.u64("sequence")?;
        let created_unix = r.u64("created")?;
        let updated_unix = r.u64("updated")?;
        let provider = r.short_str("provider")?;
        let kek_id = r.short_str("kek_id")?;
        let kek_version = r.u32("kek_version")?;
        let current_generation = r.u32("current_generation")?;
        let disk_pattern = match version {
            VERSION_1 => DiskPattern::legacy(),
            _ => r.disk_pattern()?,
        };
        let dek_count = r.take::<1>("dek_count")?[0] as usize;
        let mut deks = Vec::with_capacity(dek_count);
        for _ in 0..dek_count {
            let generation = r.u32("generation")?;
            let len = r.u16("wrapped_len")? as usize;
            let wrapped = r.slice(len, "wrapped DEK")?.to_vec();
            deks.push(WrappedDek {
                generation,
                wrapped,
            });
        }
        if r.pos != bytes.len() {
            return Err(BundleError::TrailingBytes(bytes.len() - r.pos));
        }
        let bundle = KeyBundle {
            vm_id,
            encrypt_disks: flags & FLAG_ENCRYPT_DISKS != 0,
            disk_pattern,
            content_layout: if flags & FLAG_PAGE_ALIGNED != 0 {
                ContentLayout::PageAligned
            } else {
                ContentLayout::Interleaved
            },
            sequence,
            created_unix,
            updated_unix,
            kek: KekRef {
                provider,
                kek_id,
                version: kek_version,
            },
            current_generation,
            deks,
        };
        bundle.validate()?;
        Ok(bundle)
    }
}

fn put_short_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn slice(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], BundleError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(BundleError::Truncated { field })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BundleError> {
        Ok(self
            .slice(N, field)?
            .try_into()
            .expect("slice has length N"))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, BundleError> {
        Ok(u16::from_be_bytes(self.take(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, BundleError> {
        Ok(u32::from_be_bytes(self.take(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, BundleError> {
        Ok(u64::from_be_bytes(self.take(field)?))
    }

    /// The version-2 disk pattern: count, then each pattern; canonical
    /// (see [`DiskPattern`]), and not the version-1 meaning, which only a
    /// version-1 bundle encodes.
    fn disk_pattern(&mut self) -> Result<DiskPattern, BundleError> {
        let field = "disk_pattern";
        let invalid = |reason: String| BundleError::InvalidField { field, reason };
        let count = self.take::<1>("pattern_count")?[0] as usize;
        if count > disk_pattern::MAX_PATTERNS {
            return Err(invalid(format!(
                "{count} patterns; at most {} are allowed",
                disk_pattern::MAX_PATTERNS
            )));
        }
        let patterns = (0..count)
            .map(|_| self.short_str(field))
            .collect::<Result<Vec<_>, _>>()?;
        let pattern = DiskPattern::from_canonical(patterns).map_err(|e| invalid(e.to_string()))?;
        if pattern.is_legacy() {
            return Err(invalid(
                "a version-2 bundle holds the version-1 pattern *.vmdk (not canonical)".into(),
            ));
        }
        Ok(pattern)
    }

    fn short_str(&mut self, field: &'static str) -> Result<String, BundleError> {
        let len = self.take::<1>(field)?[0] as usize;
        if len == 0 {
            return Err(BundleError::InvalidField {
                field,
                reason: "empty".into(),
            });
        }
        let raw = self.slice(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| BundleError::InvalidField {
            field,
            reason: "not UTF-8".into(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A field's name and a change of that field alone.
    pub(crate) type FieldChange = (&'static str, fn(&mut KeyBundle));

    pub(crate) fn sample() -> KeyBundle {
        KeyBundle {
            vm_id: [0x11; 16],
            encrypt_disks: true,
            disk_pattern: DiskPattern::new_vm_default(),
            content_layout: ContentLayout::PageAligned,
            sequence: 3,
            created_unix: 1_700_000_000,
            updated_unix: 1_700_000_500,
            kek: KekRef {
                provider: "local".into(),
                kek_id: "abcd".into(),
                version: 2,
            },
            current_generation: 1,
            deks: vec![WrappedDek {
                generation: 1,
                wrapped: vec![0x5A; 60],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(KeyBundle::parse(&b.encode().unwrap()).unwrap(), b);
        let mut two = sample();
        two.deks.push(WrappedDek {
            generation: 4,
            wrapped: vec![1; 60],
        });
        two.current_generation = 4;
        two.encrypt_disks = false;
        two.content_layout = ContentLayout::Interleaved;
        assert_eq!(KeyBundle::parse(&two.encode().unwrap()).unwrap(), two);
    }

    #[test]
    fn the_largest_valid_bundle_is_max_encoded_len_bytes() {
        let mut largest = sample();
        largest.kek.provider = "p".repeat(MAX_PROVIDER_LEN);
        largest.kek.kek_id = "k".repeat(MAX_KEK_ID_LEN);
        largest.disk_pattern = DiskPattern::from_canonical(
            (0..disk_pattern::MAX_PATTERNS)
                .map(|i| format!("*.{i:02}{}", "x".repeat(disk_pattern::MAX_PATTERN_LEN - 4)))
                .collect(),
        )
        .unwrap();
        largest.deks = (1..=MAX_DEKS as u32)
            .map(|generation| WrappedDek {
                generation,
                wrapped: vec![7; MAX_WRAPPED_LEN],
            })
            .collect();
        let bytes = largest.encode().unwrap();
        assert_eq!(bytes.len(), MAX_ENCODED_LEN);
        assert_eq!(KeyBundle::parse(&bytes).unwrap(), largest);
    }

    #[test]
    fn the_content_format_flag_is_bound_into_the_wrap_aad() {
        let b = sample();
        let mut bytes = b.encode().unwrap();
        bytes[11] ^= FLAG_PAGE_ALIGNED as u8;
        let flipped = KeyBundle::parse(&bytes).unwrap();
        assert_eq!(flipped.content_layout, ContentLayout::Interleaved);
        assert_ne!(flipped.wrap_aad(1), b.wrap_aad(1));
    }

    /// Every byte of the encoding is either rejected by the parser, changes
    /// the wrap AAD, or changes a wrapped DEK (which then fails its GCM tag):
    /// in version 2 (the disk pattern's bytes included) and in version 1.
    #[test]
    fn every_byte_change_is_detectable() {
        for b in [sample(), sample_v1()] {
            let bytes = b.encode().unwrap();
            let aad = b.wrap_aad(1);
            for i in 0..bytes.len() {
                for bit in [0x01, 0x20] {
                    let mut bad = bytes.clone();
                    bad[i] ^= bit;
                    match KeyBundle::parse(&bad) {
                        Err(_) => {}
                        Ok(parsed) => {
                            let aad_changed = parsed
                                .deks
                                .iter()
                                .all(|d| parsed.wrap_aad(d.generation) != aad);
                            let wrapped_changed = parsed.deks[0].wrapped != b.deks[0].wrapped;
                            assert!(aad_changed || wrapped_changed, "byte {i} undetected");
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn sample_v1() -> KeyBundle {
        KeyBundle {
            disk_pattern: DiskPattern::legacy(),
            ..sample()
        }
    }

    /// A bundle written before disk patterns existed: version 1, no
    /// pattern field, built byte by byte as that build wrote it.
    fn version_1_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"VMCRYPTB");
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&3u16.to_be_bytes());
        out.extend_from_slice(&[0x11; 16]);
        for v in [3u64, 1_700_000_000, 1_700_000_500] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.push(5);
        out.extend_from_slice(b"local");
        out.push(4);
        out.extend_from_slice(b"abcd");
        out.extend_from_slice(&2u32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        out.push(1);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&60u16.to_be_bytes());
        out.extend_from_slice(&[0x5A; 60]);
        out
    }

    #[test]
    fn a_version_1_bundle_means_vmdk_only_and_is_written_back_unchanged() {
        let parsed = KeyBundle::parse(&version_1_bytes()).unwrap();
        assert_eq!(parsed, sample_v1());
        assert!(parsed.disk_pattern.is_legacy());
        assert_eq!(parsed.version(), VERSION_1);
        assert_eq!(parsed.encode().unwrap(), version_1_bytes());
    }

    #[test]
    fn a_version_2_bundle_carries_its_pattern_after_current_generation() {
        let b = sample();
        assert_eq!(b.version(), VERSION);
        let bytes = b.encode().unwrap();
        assert_eq!(&bytes[8..10], &2u16.to_be_bytes());
        let v1 = sample_v1().encode().unwrap();
        // The version-1 encoding up to current_generation, then the pattern.
        let at = v1.len() - (1 + 4 + 2 + 60);
        assert_eq!(&bytes[10..at], &v1[10..at]);
        let mut pattern = vec![6u8];
        for p in disk_pattern::NEW_VM_DEFAULT {
            pattern.push(p.len() as u8);
            pattern.extend_from_slice(p.as_bytes());
        }
        assert_eq!(&bytes[at..at + pattern.len()], &pattern[..]);
        assert_eq!(&bytes[at + pattern.len()..], &v1[at..]);
        // An empty list (no disks) is a version-2 bundle with count 0.
        let none = KeyBundle {
            disk_pattern: DiskPattern::parse_list("").unwrap(),
            ..sample()
        };
        let bytes = none.encode().unwrap();
        assert_eq!(bytes[at], 0);
        assert_eq!(KeyBundle::parse(&bytes).unwrap(), none);
    }

    /// The tamper tests of the disk pattern: a change of the list, a
    /// downgrade to version 1 (dropping the list) and an upgrade of a
    /// version-1 bundle all change the wrap AAD or are refused; a
    /// non-canonical or unbounded list is refused naming the field.
    #[test]
    fn the_disk_pattern_is_authenticated_and_bounded() {
        let b = sample();
        let bytes = b.encode().unwrap();
        let at = sample_v1().encode().unwrap().len() - (1 + 4 + 2 + 60);
        let end = at
            + 1
            + disk_pattern::NEW_VM_DEFAULT
                .iter()
                .map(|p| 1 + p.len())
                .sum::<usize>();
        let field_error = |bytes: &[u8]| match KeyBundle::parse(bytes) {
            Err(BundleError::InvalidField { field, reason }) => {
                assert_eq!(field, "disk_pattern");
                reason
            }
            other => panic!("{other:?}"),
        };
        // `*.img` becomes `*.imh`: still canonical, so it parses, and the
        // AAD no longer matches.
        let mut widened = bytes.clone();
        let img = at + bytes[at..].windows(5).position(|w| w == b"*.img").unwrap();
        widened[img + 4] = b'h';
        let parsed = KeyBundle::parse(&widened).unwrap();
        assert_eq!(b.differing_fields(&parsed), ["disk_pattern"]);
        assert_ne!(parsed.wrap_aad(1), b.wrap_aad(1));
        // Uppercase is not canonical.
        let mut upper = bytes.clone();
        upper[img + 4] = b'G';
        assert!(field_error(&upper).contains("only a-z"));
        // Downgrade: version 1 with the pattern bytes dropped parses as
        // *.vmdk only, under another AAD.
        let mut downgraded = bytes[..at].to_vec();
        downgraded[9] = 1;
        downgraded.extend_from_slice(&bytes[end..]);
        let parsed = KeyBundle::parse(&downgraded).unwrap();
        assert_eq!(b.differing_fields(&parsed), ["disk_pattern"]);
        assert_ne!(parsed.wrap_aad(1), b.wrap_aad(1));
        // Version 2 holding exactly *.vmdk: the version-1 meaning, refused.
        let mut v1 = version_1_bytes();
        v1[9] = 2;
        let mut upgraded = v1[..at].to_vec();
        upgraded.extend_from_slice(b"\x01\x06*.vmdk");
        upgraded.extend_from_slice(&v1[at..]);
        assert!(field_error(&upgraded).contains("not canonical"));
        // Bounds: 17 patterns, a 65-byte one, an empty one.
        let mut many = bytes[..at].to_vec();
        many.push(17);
        assert!(field_error(&many).contains("at most 16"));
        let mut long = bytes[..at].to_vec();
        long.extend_from_slice(&[1, 65]);
        long.extend_from_slice(&[b'a'; 65]);
        long.extend_from_slice(&bytes[end..]);
        assert!(field_error(&long).contains("longer than 64"));
        let mut empty = bytes[..at].to_vec();
        empty.extend_from_slice(&[1, 0]);
        assert_eq!(field_error(&empty), "empty");
        // Truncated inside the list.
        assert_eq!(
            KeyBundle::parse(&bytes[..at + 4]),
            Err(BundleError::Truncated {
                field: "disk_pattern"
            })
        );
    }

    #[test]
    fn aad_binds_generation_and_ignores_wrapped_bytes() {
        let b = sample();
        assert_ne!(b.wrap_aad(1), b.wrap_aad(2));
        let mut other = b.clone();
        other.deks[0].wrapped = vec![9; 60];
        assert_eq!(b.wrap_aad(1), other.wrap_aad(1));
        other.kek.version = 3;
        assert_ne!(b.wrap_aad(1), other.wrap_aad(1));
    }

    #[test]
    fn field_errors_are_named() {
        let bytes = sample().encode().unwrap();
        assert_eq!(
            KeyBundle::parse(&bytes[..5]),
            Err(BundleError::Truncated { field: "magic" })
        );
        let mut bad = bytes.clone();
        bad[9] = 9;
        assert_eq!(
            KeyBundle::parse(&bad),
            Err(BundleError::UnsupportedVersion(9))
        );
        let mut bad = bytes.clone();
        bad[11] |= 0x04;
        assert_eq!(KeyBundle::parse(&bad), Err(BundleError::UnknownFlags(7)));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(KeyBundle::parse(&long), Err(BundleError::TrailingBytes(1)));
        assert!(KeyBundle::parse(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Every field is named when it alone differs, and nothing when
    /// bundles are equal.
    #[test]
    fn differing_fields_names_each_changed_field() {
        let b = sample();
        assert!(b.differing_fields(&b.clone()).is_empty());
        let changes: Vec<FieldChange> = vec![
            ("encrypt_disks", |b| b.encrypt_disks = !b.encrypt_disks),
            ("disk_pattern", |b| b.disk_pattern = DiskPattern::legacy()),
            ("page_aligned", |b| {
                b.content_layout = ContentLayout::Interleaved
            }),
            ("vm_id", |b| b.vm_id[3] ^= 1),
            ("sequence", |b| b.sequence += 1),
            ("created_unix", |b| b.created_unix += 1),
            ("updated_unix", |b| b.updated_unix += 1),
            ("provider", |b| b.kek.provider = "kms".into()),
            ("kek_id", |b| b.kek.kek_id = "other".into()),
            ("kek_version", |b| b.kek.version += 1),
            ("current_generation", |b| b.current_generation = 9),
            ("DEK generations", |b| b.deks[0].generation = 9),
            ("wrapped DEK", |b| b.deks[0].wrapped[0] ^= 1),
        ];
        for (field, change) in changes {
            let mut other = b.clone();
            change(&mut other);
            assert_eq!(b.differing_fields(&other), vec![field]);
        }
        let mut two = b.clone();
        two.encrypt_disks = false;
        two.kek.provider = "kms".into();
        assert_eq!(b.differing_fields(&two), vec!["encrypt_disks", "provider"]);
    }

    #[test]
    fn invalid_bundles_are_not_encoded() {
        let mut b = sample();
        b.current_generation = 2;
        assert!(b.encode().is_err());
        let mut b = sample();
        b.deks.clear();
        assert!(b.encode().is_err());
    }
}
