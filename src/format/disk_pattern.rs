//! Which file names in a VM home are disks: a bounded list of `*`-globs,
//! part of the VM's authenticated key bundle (docs/FORMAT.md §2, §4.1).
//!
//! Why a per-VM list rather than one rule: QEMU and libvirt users keep
//! disks as `.qcow2`, `.raw` or `.img`, vSphere as `.vmdk`, and what a name
//! means must not change under a VM that was made when only `.vmdk` was a
//! disk. The list lives in the bundle, so whoever writes the datastore
//! cannot widen it (a wider list would make a VM's new files pass through
//! in clear) without failing every unwrap.
//!
//! The stored form is canonical, so that one meaning has one encoding:
//! every pattern is lowercase, made of `a-z 0-9 . _ - + ~` and `*`, holds
//! a character other than `*`, has no `**`, and appears once. A pattern
//! matches a file's base name ASCII case-insensitively, `*` standing for
//! any run of bytes (also none).

use std::sync::Arc;

use super::untrusted;

/// Most patterns in one list.
pub const MAX_PATTERNS: usize = 16;
/// Most bytes of one pattern.
pub const MAX_PATTERN_LEN: usize = 64;
/// What a VM home made before disk patterns existed (bundle version 1)
/// means by a disk: `*.vmdk` covers descriptors and the `-flat`, `-delta`,
/// `-sesparse` and `-000001` extents.
pub const LEGACY: [&str; 1] = ["*.vmdk"];
/// The disks of a VM home made now, unless `--disk-pattern` says otherwise:
/// vSphere's and the common QEMU/KVM, Hyper-V formats.
pub const NEW_VM_DEFAULT: [&str; 6] = ["*.vmdk", "*.qcow2", "*.raw", "*.img", "*.vhd", "*.vhdx"];

/// Why a disk pattern list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskPatternError {
    /// More than [`MAX_PATTERNS`] patterns.
    #[error("{0} disk patterns given; at most {MAX_PATTERNS} are allowed")]
    TooMany(usize),
    /// One pattern breaks a rule; `pattern` is escaped for display.
    #[error("disk pattern \"{pattern}\" is invalid: {reason}")]
    Invalid {
        /// The pattern, escaped ([`untrusted::escape`]).
        pattern: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// A VM's disk-name patterns, in their canonical form. Cheap to clone: the
/// storage policy of every open carries one.
#[derive(Clone, PartialEq, Eq)]
pub struct DiskPattern {
    /// The patterns, in the order given.
    patterns: Arc<[String]>,
}

impl std::fmt::Debug for DiskPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskPattern({self})")
    }
}

/// The list, comma-separated; `(none)` for an empty list (no name is a
/// disk). Parentheses are not pattern characters, so this is unambiguous.
impl std::fmt::Display for DiskPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("(none)");
        }
        f.write_str(&self.patterns.join(","))
    }
}

impl DiskPattern {
    /// The meaning of a version-1 bundle: `*.vmdk` only.
    pub fn legacy() -> Self {
        Self::from_canonical(LEGACY.iter().map(|p| p.to_string()).collect())
            .expect("the legacy pattern is canonical")
    }

    /// The default of a new VM home ([`NEW_VM_DEFAULT`]).
    pub fn new_vm_default() -> Self {
        Self::from_canonical(NEW_VM_DEFAULT.iter().map(|p| p.to_string()).collect())
            .expect("the default pattern is canonical")
    }

    /// Whether this is the version-1 meaning, which a bundle stores as
    /// version 1 (FORMAT.md §4.1).
    pub fn is_legacy(&self) -> bool {
        self.patterns.len() == LEGACY.len() && self.patterns.iter().zip(LEGACY).all(|(a, b)| a == b)
    }

    /// A list as stored in a bundle: every pattern must already be
    /// canonical (lowercase), as the encoder writes it.
    pub fn from_canonical(patterns: Vec<String>) -> Result<Self, DiskPatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(DiskPatternError::TooMany(patterns.len()));
        }
        for (i, pattern) in patterns.iter().enumerate() {
            check(pattern)?;
            if patterns[..i].contains(pattern) {
                return Err(invalid(pattern, "it is listed twice"));
            }
        }
        Ok(Self {
            patterns: patterns.into(),
        })
    }

    /// A list as an operator types it: patterns separated by commas,
    /// spaces around them ignored, ASCII letters lowercased (matching is
    /// case-insensitive anyway). An empty or blank text is the empty list:
    /// no name is a disk.
    pub fn parse_list(text: &str) -> Result<Self, DiskPatternError> {
        if text.trim().is_empty() {
            return Self::from_canonical(Vec::new());
        }
        Self::from_canonical(
            text.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
        )
    }

    /// The patterns, canonical, in order.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether a file's base name `name` is a disk: it matches one of the
    /// patterns, ASCII case-insensitively.
    pub fn matches(&self, name: &[u8]) -> bool {
        self.patterns
            .iter()
            .any(|pattern| glob_matches(pattern.as_bytes(), name))
    }
}

fn invalid(pattern: &str, reason: &'static str) -> DiskPatternError {
    DiskPatternError::Invalid {
        pattern: untrusted::escape(pattern.as_bytes(), MAX_PATTERN_LEN),
        reason,
    }
}

/// The rules of one canonical pattern (module comment).
fn check(pattern: &str) -> Result<(), DiskPatternError> {
    let bytes = pattern.as_bytes();
    if bytes.is_empty() {
        return Err(invalid(pattern, "it is empty"));
    }
    if bytes.len() > MAX_PATTERN_LEN {
        return Err(invalid(pattern, "it is longer than 64 bytes"));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+~*".contains(&b);
    if !bytes.iter().all(|&b| allowed(b)) {
        return Err(invalid(
            pattern,
            "only a-z, 0-9, '.', '_', '-', '+', '~' and '*' are allowed (stored lowercase)",
        ));
    }
    if bytes.iter().all(|&b| b == b'*') {
        return Err(invalid(
            pattern,
            "it would make every file a disk; name a suffix such as *.qcow2",
        ));
    }
    if pattern.contains("**") {
        return Err(invalid(pattern, "'**' is written '*'"));
    }
    Ok(())
}

/// Whether `name` matches the canonical (lowercase) glob `pattern`, `*`
/// matching any run of bytes. Greedy with one backtrack point, so at most
/// `pattern.len() × name.len()` steps: a name chosen by whoever writes the
/// datastore cannot make a lookup slow.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The last `*` seen, and the name position its run ends at so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n].to_ascii_lowercase() {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_disk(pattern: &DiskPattern, name: &str) -> bool {
        pattern.matches(name.as_bytes())
    }

    #[test]
    fn legacy_means_vmdk_only() {
        let legacy = DiskPattern::legacy();
        assert!(legacy.is_legacy());
        for name in [
            "disk.vmdk",
            "disk-flat.vmdk",
            "disk-delta.vmdk",
            "disk-sesparse.vmdk",
            "disk-000001.vmdk",
            "DISK.VMDK",
            ".vmdk",
        ] {
            assert!(is_disk(&legacy, name), "{name}");
        }
        for name in [
            "vm.vmx",
            "vm.nvram",
            "vmdk",
            ".vmdk.bak",
            "vmware.log",
            "disk.vmdk~",
            "vm.qcow2",
        ] {
            assert!(!is_disk(&legacy, name), "{name}");
        }
    }

    #[test]
    fn the_new_default_covers_qemu_and_hyper_v_formats() {
        let default = DiskPattern::new_vm_default();
        assert!(!default.is_legacy());
        for name in [
            "disk-flat.vmdk",
            "vm.qcow2",
            "VM.QCOW2",
            "boot.raw",
            "root.img",
            "win.vhd",
            "win.vhdx",
        ] {
            assert!(is_disk(&default, name), "{name}");
        }
        for name in [
            "vm.nvram",
            "tpm2-00.permall",
            "vm.qcow2.lock",
            "img",
            "x.vhdx~",
        ] {
            assert!(!is_disk(&default, name), "{name}");
        }
    }

    #[test]
    fn globs_match_any_run_including_none() {
        let p = DiskPattern::parse_list("disk*.img, a*b*c").unwrap();
        assert_eq!(p.to_string(), "disk*.img,a*b*c");
        for name in ["disk.img", "disk-0001.img", "abc", "aXbYc", "abbc", "acbc"] {
            assert!(is_disk(&p, name), "{name}");
        }
        for name in ["disk.im", "xdisk.img", "ab", "acb", "abcd"] {
            assert!(!is_disk(&p, name), "{name}");
        }
        // Bytes that are not UTF-8 simply do not match a pattern byte.
        assert!(is_disk(&p, "a\u{e9}b\u{ff}c"));
        assert!(!p.matches(b"disk\xff.im"));
    }

    #[test]
    fn a_hostile_name_costs_at_most_pattern_times_name_steps() {
        let p = DiskPattern::parse_list("*a*a*a*a*a*a*a*a*b").unwrap();
        let name = vec![b'a'; 255];
        let started = std::time::Instant::now();
        assert!(!p.matches(&name));
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn operator_text_is_lowercased_and_trimmed_and_empty_means_none() {
        let p = DiskPattern::parse_list(" *.QCOW2 ,*.Raw").unwrap();
        assert_eq!(p.patterns(), ["*.qcow2", "*.raw"]);
        let none = DiskPattern::parse_list("  ").unwrap();
        assert!(none.patterns().is_empty());
        assert_eq!(none.to_string(), "(none)");
        assert!(!none.matches(b"disk.vmdk"));
        assert_eq!(
            DiskPattern::parse_list(&DiskPattern::new_vm_default().to_string()).unwrap(),
            DiskPattern::new_vm_default()
        );
    }

    #[test]
    fn every_rule_is_enforced_and_names_the_pattern() {
        let reason = |text: &str| match DiskPattern::parse_list(text) {
            Err(DiskPatternError::Invalid { pattern, reason }) => (pattern, reason),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(reason("*.vmdk,,*.img").0, "");
        assert!(reason("*").1.contains("every file"));
        assert!(reason("**.img").1.contains("'**'"));
        assert!(reason("a/b").1.contains("only a-z"));
        assert!(reason("*.img,*.IMG").1.contains("twice"));
        let (shown, why) = reason("x\n\u{1b}[2J");
        assert_eq!(shown, "x\\x0a\\x1b[2j");
        assert!(why.contains("only a-z"));
        assert!(reason(&"a".repeat(65)).1.contains("longer"));
        assert!(DiskPattern::parse_list(&"a".repeat(64)).is_ok());
        let many = (0..17).map(|i| format!("*.d{i}")).collect::<Vec<_>>();
        assert_eq!(
            DiskPattern::parse_list(&many.join(",")),
            Err(DiskPatternError::TooMany(17))
        );
        assert!(DiskPattern::parse_list(&many[..16].join(",")).is_ok());
        // The stored form must already be lowercase.
        assert!(DiskPattern::from_canonical(vec!["*.IMG".into()]).is_err());
    }
}
