//! HKDF-SHA256 key derivation.
//!
//! Each derived key has its own `info` label so that no two purposes can ever
//! share a key. The labels are part of the on-disk format (docs/FORMAT.md).

use hkdf::Hkdf;
use sha2::Sha256;

use super::secret::{Dek, DerivedKey, KEY_LEN};

/// `info` label for a file's content-encryption subkey.
pub const LABEL_FILE_CONTENT: &[u8] = b"vmcryptfs v1 file content";
/// `info` label for a file header's MAC key.
pub const LABEL_FILE_HEADER_MAC: &[u8] = b"vmcryptfs v1 file header mac";
/// `info` label for the public DEK fingerprint.
pub const LABEL_DEK_FINGERPRINT: &[u8] = b"vmcryptfs v1 dek fingerprint";
/// `info` label for the key that seals one object's extended attribute
/// values of one namespace.
pub const LABEL_XATTR_VALUE: &[u8] = b"vmcryptfs v1 xattr value";

fn expand(dek: &Dek, salt: &[u8], label: &[u8], context: &[u8]) -> DerivedKey {
    let hk = Hkdf::<Sha256>::new(Some(salt), dek.expose());
    let mut okm = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    hk.expand_multi_info(&[label, context], okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    DerivedKey::from_bytes(*okm)
}

/// The AES-256-GCM key for one file's content blocks.
///
/// Salting with the VM id and binding the file id into `info` means a file
/// copied into another VM home, or a block moved between files, is decrypted
/// under a different key and fails authentication.
pub fn file_content_key(dek: &Dek, vm_id: &[u8; 16], file_id: &[u8; 16]) -> DerivedKey {
    expand(dek, vm_id, LABEL_FILE_CONTENT, file_id)
}

/// The HMAC-SHA256 key that authenticates one file's header.
pub fn file_header_mac_key(dek: &Dek, vm_id: &[u8; 16], file_id: &[u8; 16]) -> DerivedKey {
    expand(dek, vm_id, LABEL_FILE_HEADER_MAC, file_id)
}

/// The AES-256-GCM key for the sealed attribute values of one namespace of
/// one file or directory, named by its attribute id (docs/FORMAT.md §7):
/// a value moved to another object is opened under another key and fails.
pub fn xattr_value_key(dek: &Dek, vm_id: &[u8; 16], attribute_id: &[u8; 16]) -> DerivedKey {
    expand(dek, vm_id, LABEL_XATTR_VALUE, attribute_id)
}

/// A short public fingerprint of a DEK: the first 8 bytes of an HKDF output,
/// in hex. HKDF is a PRF, so the fingerprint reveals nothing about the key,
/// yet it lets an operator see whether two hosts hold the same DEK.
pub fn dek_fingerprint(dek: &Dek, vm_id: &[u8; 16]) -> String {
    let key = expand(dek, vm_id, LABEL_DEK_FINGERPRINT, b"");
    hex::encode(&key.expose()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_domain_separated() {
        let dek = Dek::from_bytes([7; 32]);
        let vm = [1u8; 16];
        let file = [2u8; 16];
        let content = file_content_key(&dek, &vm, &file);
        let mac = file_header_mac_key(&dek, &vm, &file);
        assert_ne!(content.expose(), mac.expose());
        assert_ne!(xattr_value_key(&dek, &vm, &file).expose(), content.expose());
        assert_ne!(xattr_value_key(&dek, &vm, &file).expose(), mac.expose());
        assert_ne!(
            file_content_key(&dek, &vm, &[3u8; 16]).expose(),
            content.expose()
        );
        assert_ne!(
            file_content_key(&dek, &[9u8; 16], &file).expose(),
            content.expose()
        );
    }

    #[test]
    fn derivation_is_deterministic() {
        let dek = Dek::from_bytes([7; 32]);
        assert_eq!(
            file_content_key(&dek, &[1; 16], &[2; 16]).expose(),
            file_content_key(&dek, &[1; 16], &[2; 16]).expose()
        );
    }

    #[test]
    fn fingerprint_is_short_hex_and_key_dependent() {
        let fp = dek_fingerprint(&Dek::from_bytes([7; 32]), &[1; 16]);
        assert_eq!(fp.len(), 16);
        assert_ne!(fp, dek_fingerprint(&Dek::from_bytes([8; 32]), &[1; 16]));
    }
}
