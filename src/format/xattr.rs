//! Extended attributes: which names are sealed, passed through or internal,
//! the stored form of a sealed value, and the size rules (docs/FORMAT.md
//! §7). Pure functions only; the I/O is `datastore::xattrs`.
//!
//! Why names stay in clear: vmcryptfs stores file and directory names in
//! clear (§1), because hypervisors, datastore browsers and backup tools
//! need them; an attribute name (`trusted.libvirt.security.ref_dac`,
//! `user.backup.checksum`) says as much as a file name does, and keeping it
//! lets the backing file system enforce XATTR_CREATE, XATTR_REPLACE and
//! ENODATA itself, atomically, with no name index of our own to keep
//! consistent. Values are what is secret, and they are sealed.

/// The first byte of every sealed value: the version of this layout.
pub const SEALED_VERSION: u8 = 1;
/// Bytes before the nonce: version (1) and DEK generation (4, big-endian).
pub const SEALED_PREFIX_LEN: usize = 5;
/// AES-GCM nonce length of a sealed value (as for content blocks).
pub const NONCE_LEN: usize = 16;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a value.
pub const SEALED_OVERHEAD: usize = SEALED_PREFIX_LEN + NONCE_LEN + TAG_LEN;
/// The kernel's largest attribute value (`XATTR_SIZE_MAX`): a larger one
/// never reaches a file system.
pub const XATTR_SIZE_MAX: usize = 65536;
/// The largest value a sealed namespace accepts: a larger one would not
/// fit the kernel's limit once sealed, so it is E2BIG as a value over
/// `XATTR_SIZE_MAX` is on ext4. Below this, the backing file system's own
/// limit (ext4: about one block without `ea_inode`) applies to the sealed
/// form and answers ENOSPC or E2BIG itself.
pub const MAX_SEALED_PLAINTEXT: usize = XATTR_SIZE_MAX - SEALED_OVERHEAD;
/// Length of an attribute id (`<namespace>.vmcryptfs.id`).
pub const ATTRIBUTE_ID_LEN: usize = 16;
/// What follows the namespace prefix in every internal attribute name.
const INTERNAL_INFIX: &[u8] = b"vmcryptfs.";

/// An attribute's namespace, from the text before its first dot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// `user.*`: sealed in encrypted VM homes.
    User,
    /// `trusted.*`: sealed in encrypted VM homes (libvirt keeps owners and
    /// labels there).
    Trusted,
    /// `security.*`: LSM labels and file capabilities, which the kernel
    /// itself reads; passed through.
    Security,
    /// `system.*` (`system.posix_acl_access`, `..._default`): passed
    /// through.
    System,
    /// Anything else: the backing file system refuses it as ext4 would
    /// (EOPNOTSUPP).
    Other,
}

impl Namespace {
    /// The namespace of the attribute called `name`.
    pub fn of(name: &[u8]) -> Self {
        let prefix = name.split(|&b| b == b'.').next().unwrap_or_default();
        match prefix {
            b"user" if name.len() > 5 => Namespace::User,
            b"trusted" if name.len() > 8 => Namespace::Trusted,
            b"security" => Namespace::Security,
            b"system" => Namespace::System,
            _ => Namespace::Other,
        }
    }

    /// Whether values in this namespace are sealed on objects of an
    /// encrypted VM home.
    pub fn is_sealed(self) -> bool {
        matches!(self, Namespace::User | Namespace::Trusted)
    }

    /// The internal attribute holding this namespace's attribute id, for
    /// the sealed namespaces.
    pub fn id_name(self) -> Option<&'static [u8]> {
        match self {
            Namespace::User => Some(b"user.vmcryptfs.id"),
            Namespace::Trusted => Some(b"trusted.vmcryptfs.id"),
            _ => None,
        }
    }
}

/// Whether `name` is one of vmcryptfs's own attributes
/// (`<namespace>.vmcryptfs.*`): hidden from listings, ENODATA to get, and
/// refused (EPERM) to set or remove through the mount, in every area, like
/// internal file names.
pub fn is_internal(name: &[u8]) -> bool {
    match name.iter().position(|&b| b == b'.') {
        Some(dot) => name[dot + 1..].starts_with(INTERNAL_INFIX),
        None => false,
    }
}

/// What the mount does with an attribute called `name` on an object whose
/// attributes are sealed (`sealed_object`: a directory, or a file whose
/// content is encrypted, in an encrypted VM home) or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Value sealed with the VM's keys (§7.2).
    Sealed(Namespace),
    /// Name and value stored on the backing object unchanged.
    PassThrough,
    /// vmcryptfs's own; the user never sees or sets it.
    Internal,
}

/// The [`Treatment`] of attribute `name`.
pub fn treatment(name: &[u8], sealed_object: bool) -> Treatment {
    if is_internal(name) {
        return Treatment::Internal;
    }
    match Namespace::of(name) {
        ns if sealed_object && ns.is_sealed() => Treatment::Sealed(ns),
        _ => Treatment::PassThrough,
    }
}

/// The names of a backing `listxattr` list (names each ending in NUL) that
/// the caller sees: internal names never, `trusted.*` only for a caller
/// that may read them (CAP_SYS_ADMIN, as ext4 decides). Malformed input
/// (no final NUL) keeps only whole names.
pub fn visible_names(list: &[u8], show_trusted: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split_inclusive(|&b| b == 0) {
        let Some((&0, bare)) = name.split_last() else {
            continue;
        };
        if bare.is_empty() || is_internal(bare) {
            continue;
        }
        if !show_trusted && Namespace::of(bare) == Namespace::Trusted {
            continue;
        }
        out.extend_from_slice(name);
    }
    out
}

/// The names of a backing `listxattr` list, without their NULs.
pub fn names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|name| !name.is_empty())
}

/// How to answer a get or list whose result is `len` bytes when the
/// caller's buffer holds `size` (0: it asks for the length only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizedReply {
    /// Send the length only.
    Size(u32),
    /// Send the bytes.
    Data,
    /// The buffer is too small: ERANGE.
    TooSmall,
}

/// [`SizedReply`] for a `len`-byte result and a `size`-byte buffer.
pub fn sized_reply(len: usize, size: u32) -> SizedReply {
    if size == 0 {
        // A result past u32 cannot exist (the kernel caps both at 64 KiB).
        return SizedReply::Size(u32::try_from(len).unwrap_or(u32::MAX));
    }
    if len <= size as usize {
        SizedReply::Data
    } else {
        SizedReply::TooSmall
    }
}

/// A sealed value's parts, parsed but not authenticated.
#[derive(Debug, PartialEq, Eq)]
pub struct SealedParts<'v> {
    /// The DEK generation that sealed it.
    pub generation: u32,
    /// The version byte and generation: the first bytes of the AAD.
    pub prefix: &'v [u8; SEALED_PREFIX_LEN],
    /// The AES-GCM nonce.
    pub nonce: &'v [u8; NONCE_LEN],
    /// The ciphertext, as long as the plaintext.
    pub ciphertext: &'v [u8],
    /// The AES-GCM tag.
    pub tag: &'v [u8; TAG_LEN],
}

/// Why stored bytes are not a sealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedParseError {
    /// Shorter than the fixed fields.
    #[error("{0} bytes is shorter than a sealed value's {SEALED_OVERHEAD} fixed bytes")]
    TooShort(usize),
    /// Another layout version.
    #[error(
        "sealed value layout version {0} is unknown (this build reads version {SEALED_VERSION})"
    )]
    UnknownVersion(u8),
}

/// Splits a stored sealed value into its fields (§7.2).
pub fn parse_sealed(stored: &[u8]) -> Result<SealedParts<'_>, SealedParseError> {
    if stored.len() < SEALED_OVERHEAD {
        return Err(SealedParseError::TooShort(stored.len()));
    }
    if stored[0] != SEALED_VERSION {
        return Err(SealedParseError::UnknownVersion(stored[0]));
    }
    let (prefix, rest) = stored.split_at(SEALED_PREFIX_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let prefix: &[u8; SEALED_PREFIX_LEN] = prefix.try_into().expect("split at its length");
    Ok(SealedParts {
        generation: u32::from_be_bytes(prefix[1..].try_into().expect("4 bytes")),
        prefix,
        nonce: nonce.try_into().expect("split at its length"),
        ciphertext,
        tag: tag.try_into().expect("split at its length"),
    })
}

/// The version byte and generation that start a value sealed under DEK
/// generation `generation`.
pub fn sealed_prefix(generation: u32) -> [u8; SEALED_PREFIX_LEN] {
    let mut prefix = [SEALED_VERSION, 0, 0, 0, 0];
    prefix[1..].copy_from_slice(&generation.to_be_bytes());
    prefix
}

/// The AAD of a sealed value: its prefix, then the attribute's full name
/// (namespace included), so a value moved to another name, or whose
/// version or generation byte changed, fails authentication.
pub fn sealed_aad(prefix: &[u8; SEALED_PREFIX_LEN], name: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_PREFIX_LEN + name.len());
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(name);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_the_text_before_the_first_dot() {
        let cases: [(&[u8], Namespace); 12] = [
            (b"user.a", Namespace::User),
            (b"user.libvirt.x", Namespace::User),
            (b"trusted.libvirt.security.ref_dac", Namespace::Trusted),
            (b"security.selinux", Namespace::Security),
            (b"security.capability", Namespace::Security),
            (b"system.posix_acl_access", Namespace::System),
            (b"system.posix_acl_default", Namespace::System),
            (b"user.", Namespace::Other),
            (b"user", Namespace::Other),
            (b"users.a", Namespace::Other),
            (b"trusted.", Namespace::Other),
            (b"", Namespace::Other),
        ];
        for (name, ns) in cases {
            assert_eq!(Namespace::of(name), ns, "{}", String::from_utf8_lossy(name));
        }
        assert!(Namespace::User.is_sealed() && Namespace::Trusted.is_sealed());
        assert!(!Namespace::Security.is_sealed() && !Namespace::System.is_sealed());
        assert!(!Namespace::Other.is_sealed());
    }

    #[test]
    fn internal_names_are_the_vmcryptfs_ones_of_any_namespace() {
        for name in [
            &b"user.vmcryptfs.id"[..],
            b"trusted.vmcryptfs.id",
            b"user.vmcryptfs.anything",
            b"security.vmcryptfs.x",
        ] {
            assert!(is_internal(name));
            assert_eq!(treatment(name, true), Treatment::Internal);
            assert_eq!(treatment(name, false), Treatment::Internal);
        }
        for name in [
            &b"user.vmcryptfs"[..],
            b"user.vmcryptfsid",
            b"user.x.vmcryptfs.id",
            b"vmcryptfs.id",
        ] {
            assert!(!is_internal(name), "{}", String::from_utf8_lossy(name));
        }
        for ns in [Namespace::User, Namespace::Trusted] {
            assert!(is_internal(ns.id_name().unwrap()));
        }
        assert_eq!(Namespace::Security.id_name(), None);
    }

    #[test]
    fn only_user_and_trusted_values_of_sealed_objects_are_sealed() {
        assert_eq!(
            treatment(b"user.a", true),
            Treatment::Sealed(Namespace::User)
        );
        assert_eq!(
            treatment(b"trusted.libvirt.security.ref_dac", true),
            Treatment::Sealed(Namespace::Trusted)
        );
        for name in [
            &b"security.selinux"[..],
            b"system.posix_acl_access",
            b"other.x",
        ] {
            assert_eq!(treatment(name, true), Treatment::PassThrough);
        }
        for name in [&b"user.a"[..], b"trusted.b", b"security.selinux"] {
            assert_eq!(treatment(name, false), Treatment::PassThrough);
        }
    }

    #[test]
    fn listings_hide_internal_names_and_trusted_ones_from_the_unprivileged() {
        let list =
            b"user.a\0user.vmcryptfs.id\0trusted.t\0trusted.vmcryptfs.id\0security.selinux\0";
        assert_eq!(
            visible_names(list, true),
            b"user.a\0trusted.t\0security.selinux\0"
        );
        assert_eq!(visible_names(list, false), b"user.a\0security.selinux\0");
        assert_eq!(visible_names(b"", true), b"");
        assert_eq!(visible_names(b"user.a\0user.cut", true), b"user.a\0");
        assert_eq!(visible_names(b"\0\0user.a\0", true), b"user.a\0");
        assert_eq!(
            names(b"user.a\0trusted.t\0").collect::<Vec<_>>(),
            [&b"user.a"[..], b"trusted.t"]
        );
    }

    #[test]
    fn sized_replies_probe_fit_or_overflow() {
        assert_eq!(sized_reply(10, 0), SizedReply::Size(10));
        assert_eq!(sized_reply(0, 0), SizedReply::Size(0));
        assert_eq!(sized_reply(10, 10), SizedReply::Data);
        assert_eq!(sized_reply(0, 1), SizedReply::Data);
        assert_eq!(sized_reply(10, 9), SizedReply::TooSmall);
        assert_eq!(sized_reply(65536, 65536), SizedReply::Data);
    }

    #[test]
    fn a_sealed_value_parses_field_by_field() {
        let mut stored = sealed_prefix(0x0102_0304).to_vec();
        stored.extend_from_slice(&[7; NONCE_LEN]);
        stored.extend_from_slice(b"ciphertext");
        stored.extend_from_slice(&[9; TAG_LEN]);
        let parts = parse_sealed(&stored).unwrap();
        assert_eq!(parts.generation, 0x0102_0304);
        assert_eq!(parts.prefix, &[1, 1, 2, 3, 4]);
        assert_eq!(parts.nonce, &[7; NONCE_LEN]);
        assert_eq!(parts.ciphertext, b"ciphertext");
        assert_eq!(parts.tag, &[9; TAG_LEN]);
        assert_eq!(stored.len(), b"ciphertext".len() + SEALED_OVERHEAD);

        let mut empty = sealed_prefix(1).to_vec();
        empty.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        assert!(parse_sealed(&empty).unwrap().ciphertext.is_empty());
        assert_eq!(
            parse_sealed(&stored[..SEALED_OVERHEAD - 1]),
            Err(SealedParseError::TooShort(SEALED_OVERHEAD - 1))
        );
        stored[0] = 2;
        assert_eq!(
            parse_sealed(&stored),
            Err(SealedParseError::UnknownVersion(2))
        );
    }

    #[test]
    fn the_aad_is_the_prefix_then_the_full_name() {
        let prefix = sealed_prefix(3);
        assert_eq!(sealed_aad(&prefix, b"user.a"), b"\x01\0\0\0\x03user.a");
        assert_ne!(
            sealed_aad(&prefix, b"user.a"),
            sealed_aad(&prefix, b"trusted.a")
        );
    }

    #[test]
    fn the_plaintext_limit_leaves_room_for_the_seal() {
        assert_eq!(SEALED_OVERHEAD, 37);
        assert_eq!(MAX_SEALED_PLAINTEXT + SEALED_OVERHEAD, XATTR_SIZE_MAX);
        assert_eq!(MAX_SEALED_PLAINTEXT, 65499);
    }
}
