//! The 44-byte header at the start of every non-empty encrypted file.
//!
//! ```text
//! 0..4    magic "VMCF"
//! 4..6    version u16 BE: the content format (1 interleaved, 2 page-aligned)
//! 6..8    flags u16 BE (reserved, must be 0)
//! 8..12   DEK generation u32 BE
//! 12..28  file id (16 random bytes)
//! 28..44  HMAC-SHA256(K_hdr, bytes 0..28), first 16 bytes
//! ```
//!
//! The MAC key depends on the DEK generation named inside the header, so
//! parsing is two steps: [`UnverifiedHeader::parse`] reads the fields, the
//! caller looks up that generation's DEK, and [`UnverifiedHeader::verify`]
//! checks the MAC. A changed generation selects a different (or missing) DEK
//! and fails verification like any other changed byte.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::content_layout::ContentLayout;
use crate::crypto::secret::DerivedKey;

/// Header magic.
pub const MAGIC: [u8; 4] = *b"VMCF";
/// Header length in bytes (equals `offsets::HEADER_LEN`).
pub const LEN: usize = 44;
const AUTHENTICATED_LEN: usize = 28;
const MAC_LEN: usize = 16;

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 44 bytes.
    #[error("file header truncated: {len} of {LEN} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The magic is not `VMCF`.
    #[error(
        "file header magic is {found:02x?}, expected \"VMCF\": not a vmcryptfs file, or corrupted"
    )]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A version this build does not know.
    #[error("file header version {0} is not supported (this build reads content formats 1 and 2)")]
    UnsupportedVersion(u16),
    /// Reserved flag bits are set.
    #[error("file header has unknown flags {0:#06x}")]
    UnknownFlags(u16),
    /// The MAC does not verify.
    #[error("file header authentication failed: the header was modified, or the file belongs to another VM")]
    MacMismatch,
}

/// The authenticated content of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Which of the bundle's DEK generations encrypts this file.
    pub dek_generation: u32,
    /// Random id that binds every block (AAD and key) to this file.
    pub file_id: [u8; 16],
    /// The content format (the header's version field): how the blocks
    /// after the header are laid out.
    pub layout: ContentLayout,
}

impl FileHeader {
    /// A header for a new file, with a fresh random file id.
    pub fn new_random(dek_generation: u32, layout: ContentLayout) -> Self {
        Self {
            dek_generation,
            file_id: crate::crypto::random::array(),
            layout,
        }
    }

    fn authenticated_bytes(&self) -> [u8; AUTHENTICATED_LEN] {
        let mut out = [0u8; AUTHENTICATED_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&self.layout.format_version().to_be_bytes());
        out[6..8].copy_from_slice(&0u16.to_be_bytes());
        out[8..12].copy_from_slice(&self.dek_generation.to_be_bytes());
        out[12..28].copy_from_slice(&self.file_id);
        out
    }

    /// Serializes the header with its MAC under `mac_key` (K_hdr).
    pub fn encode(&self, mac_key: &DerivedKey) -> [u8; LEN] {
        let body = self.authenticated_bytes();
        let mut out = [0u8; LEN];
        out[..AUTHENTICATED_LEN].copy_from_slice(&body);
        out[AUTHENTICATED_LEN..].copy_from_slice(&header_mac(mac_key, &body)[..MAC_LEN]);
        out
    }
}

fn new_mac(mac_key: &DerivedKey, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(mac_key.expose()).expect("HMAC accepts any key length");
    mac.update(body);
    mac
}

fn header_mac(mac_key: &DerivedKey, body: &[u8]) -> [u8; 32] {
    new_mac(mac_key, body).finalize().into_bytes().into()
}

/// A header whose fields parsed but whose MAC is not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct UnverifiedHeader {
    fields: FileHeader,
    raw: [u8; LEN],
}

impl UnverifiedHeader {
    /// Parses the first 44 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        let raw: [u8; LEN] = bytes
            .get(..LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(HeaderError::Truncated { len: bytes.len() })?;
        let magic: [u8; 4] = raw[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let version = u16::from_be_bytes([raw[4], raw[5]]);
        let layout = ContentLayout::from_format_version(version)
            .ok_or(HeaderError::UnsupportedVersion(version))?;
        let flags = u16::from_be_bytes([raw[6], raw[7]]);
        if flags != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let fields = FileHeader {
            dek_generation: u32::from_be_bytes(raw[8..12].try_into().expect("4 bytes")),
            file_id: raw[12..28].try_into().expect("16 bytes"),
            layout,
        };
        Ok(Self { fields, raw })
    }

    /// The DEK generation the header claims (not yet authenticated).
    pub fn dek_generation(&self) -> u32 {
        self.fields.dek_generation
    }

    /// The content format the header claims (not yet authenticated).
    pub fn layout(&self) -> ContentLayout {
        self.fields.layout
    }

    /// The file id the header claims (not yet authenticated).
    pub fn file_id(&self) -> [u8; 16] {
        self.fields.file_id
    }

    /// Checks the MAC in constant time under `mac_key` (K_hdr for the
    /// claimed generation and file id).
    pub fn verify(self, mac_key: &DerivedKey) -> Result<FileHeader, HeaderError> {
        new_mac(mac_key, &self.raw[..AUTHENTICATED_LEN])
            .verify_truncated_left(&self.raw[AUTHENTICATED_LEN..])
            .map_err(|_| HeaderError::MacMismatch)?;
        Ok(self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DerivedKey {
        DerivedKey::from_bytes([3; 32])
    }

    const LAYOUTS: [ContentLayout; 2] = [ContentLayout::Interleaved, ContentLayout::PageAligned];

    #[test]
    fn round_trip() {
        for layout in LAYOUTS {
            let header = FileHeader::new_random(7, layout);
            let bytes = header.encode(&key());
            let parsed = UnverifiedHeader::parse(&bytes).unwrap();
            assert_eq!(parsed.dek_generation(), 7);
            assert_eq!(parsed.layout(), layout);
            assert_eq!(bytes[5] as u16, layout.format_version());
            assert_eq!(parsed.verify(&key()).unwrap(), header);
        }
    }

    #[test]
    fn a_header_moved_to_the_other_content_format_fails_authentication() {
        for layout in LAYOUTS {
            let mut bytes = FileHeader::new_random(1, layout).encode(&key());
            bytes[5] = 3 - bytes[5];
            let parsed = UnverifiedHeader::parse(&bytes).unwrap();
            assert_ne!(parsed.layout(), layout);
            assert_eq!(parsed.verify(&key()).unwrap_err(), HeaderError::MacMismatch);
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = FileHeader::new_random(1, ContentLayout::PageAligned).encode(&key());
        for byte in 0..LEN {
            for bit in 0..8 {
                let mut bad = bytes;
                bad[byte] ^= 1 << bit;
                let outcome = UnverifiedHeader::parse(&bad).and_then(|h| h.verify(&key()));
                assert!(outcome.is_err(), "byte {byte} bit {bit} not detected");
            }
        }
    }

    #[test]
    fn each_field_fails_with_its_own_error() {
        let bytes = FileHeader::new_random(1, ContentLayout::Interleaved).encode(&key());
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(
            UnverifiedHeader::parse(&bad),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut bad = bytes;
        bad[5] = 3;
        assert_eq!(
            UnverifiedHeader::parse(&bad).unwrap_err(),
            HeaderError::UnsupportedVersion(3)
        );
        let mut bad = bytes;
        bad[7] = 1;
        assert_eq!(
            UnverifiedHeader::parse(&bad).unwrap_err(),
            HeaderError::UnknownFlags(1)
        );
        let mut bad = bytes;
        bad[11] ^= 1;
        let h = UnverifiedHeader::parse(&bad).unwrap();
        assert_eq!(h.dek_generation(), 0);
        assert_eq!(h.verify(&key()).unwrap_err(), HeaderError::MacMismatch);
        assert_eq!(
            UnverifiedHeader::parse(&bytes[..43]).unwrap_err(),
            HeaderError::Truncated { len: 43 }
        );
        assert_eq!(
            UnverifiedHeader::parse(&bytes)
                .unwrap()
                .verify(&DerivedKey::from_bytes([4; 32])),
            Err(HeaderError::MacMismatch)
        );
    }
}
