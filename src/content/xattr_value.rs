//! Sealing and opening extended attribute values of encrypted VM homes
//! (docs/FORMAT.md §7.2): AES-256-GCM with a 128-bit random nonce, as for
//! content blocks, under a key derived from the DEK of the VM's current
//! generation and the object's attribute id, with the layout prefix and
//! the attribute's full name as AAD.

use zeroize::Zeroizing;

use crate::crypto::block_aead::{self, BlockAead};
use crate::crypto::keyring::VmKeyring;
use crate::crypto::{kdf, random};
use crate::format::xattr::{self as layout, SealedParseError, ATTRIBUTE_ID_LEN};

/// Why a stored value did not open. Carries no byte of the value: it is
/// attacker-controlled, and the message goes to a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a sealed value at all.
    #[error("{0}")]
    Malformed(#[from] SealedParseError),
    /// Sealed under a DEK generation the VM's bundle does not hold.
    #[error("sealed under DEK generation {0}, which the VM's key bundle does not hold")]
    UnknownGeneration(u32),
    /// The tag did not verify.
    #[error("failed authentication (modified, or moved from another attribute or file)")]
    Authentication,
}

/// The stored form of `plaintext` as attribute `name` of the object whose
/// attribute id (for this namespace) is `attribute_id`, sealed under the
/// VM's current DEK generation.
pub fn seal(
    keyring: &VmKeyring,
    attribute_id: &[u8; ATTRIBUTE_ID_LEN],
    name: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let generation = keyring.current_generation();
    let dek = keyring
        .dek(generation)
        .expect("a keyring holds its current generation");
    let aead = BlockAead::new(&kdf::xattr_value_key(dek, keyring.vm_id(), attribute_id));
    let prefix = layout::sealed_prefix(generation);
    let mut stored = prefix.to_vec();
    let nonce: [u8; block_aead::NONCE_LEN] = random::array();
    aead.seal_append(
        &nonce,
        &layout::sealed_aad(&prefix, name),
        plaintext,
        &mut stored,
    );
    stored
}

/// The plaintext of `stored` (attribute `name` of the object with
/// attribute id `attribute_id`) and the generation that sealed it.
pub fn open(
    keyring: &VmKeyring,
    attribute_id: &[u8; ATTRIBUTE_ID_LEN],
    name: &[u8],
    stored: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, u32), OpenError> {
    let parts = layout::parse_sealed(stored)?;
    let dek = keyring
        .dek(parts.generation)
        .ok_or(OpenError::UnknownGeneration(parts.generation))?;
    let aead = BlockAead::new(&kdf::xattr_value_key(dek, keyring.vm_id(), attribute_id));
    let mut plaintext = Zeroizing::new(vec![0; parts.ciphertext.len()]);
    aead.open_detached(
        &layout::sealed_aad(parts.prefix, name),
        parts.nonce,
        parts.ciphertext,
        parts.tag,
        &mut plaintext,
    )
    .map_err(|_| OpenError::Authentication)?;
    Ok((plaintext, parts.generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::Dek;
    use crate::format::xattr::{SEALED_OVERHEAD, SEALED_PREFIX_LEN};
    use std::collections::BTreeMap;

    fn keyring(current: u32) -> VmKeyring {
        let deks: BTreeMap<u32, Dek> = (1..=current)
            .map(|g| (g, Dek::from_bytes([g as u8; 32])))
            .collect();
        VmKeyring::new([4; 16], current, deks)
    }

    const ID: [u8; 16] = [1; 16];

    #[test]
    fn round_trip_at_every_length_with_fresh_nonces() {
        let keys = keyring(1);
        for len in [0usize, 1, 16, 100, 4059, 65499] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let stored = seal(&keys, &ID, b"user.a", &plain);
            assert_eq!(stored.len(), len + SEALED_OVERHEAD);
            let (opened, generation) = open(&keys, &ID, b"user.a", &stored).unwrap();
            assert_eq!(&opened[..], &plain[..]);
            assert_eq!(generation, 1);
            assert_ne!(stored, seal(&keys, &ID, b"user.a", &plain), "nonce reused");
        }
    }

    #[test]
    fn every_bit_of_every_field_is_authenticated() {
        let keys = keyring(2);
        let stored = seal(&keys, &ID, b"trusted.x", b"secret value");
        for byte in 0..stored.len() {
            for bit in 0..8 {
                let mut bad = stored.clone();
                bad[byte] ^= 1 << bit;
                let err = open(&keys, &ID, b"trusted.x", &bad).unwrap_err();
                let expected = match byte {
                    0 => OpenError::Malformed(SealedParseError::UnknownVersion(bad[0])),
                    1..SEALED_PREFIX_LEN => {
                        let generation = u32::from_be_bytes(bad[1..5].try_into().unwrap());
                        if generation == 1 {
                            OpenError::Authentication
                        } else {
                            OpenError::UnknownGeneration(generation)
                        }
                    }
                    _ => OpenError::Authentication,
                };
                assert_eq!(err, expected, "byte {byte} bit {bit}");
            }
        }
        assert!(matches!(
            open(&keys, &ID, b"trusted.x", &stored[..SEALED_OVERHEAD - 1]),
            Err(OpenError::Malformed(SealedParseError::TooShort(_)))
        ));
    }

    #[test]
    fn a_value_moved_to_another_name_object_or_vm_fails() {
        let keys = keyring(1);
        let stored = seal(&keys, &ID, b"user.a", b"v");
        assert_eq!(
            open(&keys, &ID, b"user.b", &stored),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            open(&keys, &ID, b"trusted.a", &stored),
            Err(OpenError::Authentication)
        );
        assert_eq!(
            open(&keys, &[2; 16], b"user.a", &stored),
            Err(OpenError::Authentication)
        );
        let other_vm = VmKeyring::new([5; 16], 1, [(1, Dek::from_bytes([1; 32]))].into());
        assert_eq!(
            open(&other_vm, &ID, b"user.a", &stored),
            Err(OpenError::Authentication)
        );
    }

    #[test]
    fn an_old_generation_opens_while_the_bundle_holds_it() {
        let old = keyring(1);
        let stored = seal(&old, &ID, b"user.a", b"v");
        let both = keyring(2);
        assert_eq!(open(&both, &ID, b"user.a", &stored).unwrap().1, 1);
        assert_eq!(
            open(&both, &ID, b"user.a", &seal(&both, &ID, b"user.a", b"v"))
                .unwrap()
                .1,
            2
        );
        let only_new = VmKeyring::new([4; 16], 2, [(2, Dek::from_bytes([2; 32]))].into());
        assert_eq!(
            open(&only_new, &ID, b"user.a", &stored),
            Err(OpenError::UnknownGeneration(1))
        );
    }
}
