//! A file's header and content cipher: sealing and opening one block
//! (gocryptfs's `contentenc` role for one file).

use super::ContentError;
use crate::content::sealed_region::{SealedBlock, SealedBlockMut};
use crate::crypto::block_aead::{BlockAead, NONCE_LEN, TAG_LEN};
use crate::crypto::kdf;
use crate::crypto::keyring::VmKeyring;
use crate::format::file_header::FileHeader;
use crate::format::offsets::{BlockSpan, PLAIN_BLOCK_LEN};

/// The header and content cipher of a non-empty file.
pub(in crate::content) struct FileKeys {
    header: FileHeader,
    aead: BlockAead,
}

impl FileKeys {
    pub(super) fn derive(keyring: &VmKeyring, header: FileHeader) -> Result<Self, ContentError> {
        let dek = keyring
            .dek(header.dek_generation)
            .ok_or(ContentError::UnknownGeneration(header.dek_generation))?;
        let key = kdf::file_content_key(dek, keyring.vm_id(), &header.file_id);
        Ok(Self {
            header,
            aead: BlockAead::new(&key),
        })
    }

    /// AAD of one block: file id || block number.
    fn block_aad(&self, block_no: u64) -> [u8; 24] {
        let mut aad = [0u8; 24];
        aad[..16].copy_from_slice(&self.header.file_id);
        aad[16..].copy_from_slice(&block_no.to_be_bytes());
        aad
    }

    /// Seals one block into its stored form under a fresh `nonce`.
    pub(super) fn seal_block(
        &self,
        block_no: u64,
        nonce: &[u8; NONCE_LEN],
        plain: &[u8],
        sealed: SealedBlockMut<'_>,
    ) {
        sealed.nonce.copy_from_slice(nonce);
        let tag: &mut [u8; TAG_LEN] = sealed.tag.try_into().expect("TAG_LEN bytes");
        self.aead.seal_detached(
            nonce,
            &self.block_aad(block_no),
            plain,
            sealed.ciphertext,
            tag,
        );
    }

    /// Opens one stored block into `plain` (as long as its ciphertext). A
    /// hole reads as zeros.
    pub(in crate::content) fn open_block(
        &self,
        block_no: u64,
        sealed: &SealedBlock<'_>,
        plain: &mut [u8],
    ) -> Result<(), ContentError> {
        if sealed.is_hole() {
            plain.fill(0);
            return Ok(());
        }
        self.aead
            .open_detached(
                &self.block_aad(block_no),
                sealed.nonce,
                sealed.ciphertext,
                sealed.tag,
                plain,
            )
            .map_err(|_| ContentError::BlockAuthentication { block_no })
    }

    /// Opens the part `span` of a block into `dest` (`span.len` bytes).
    pub(super) fn open_span(
        &self,
        span: &BlockSpan,
        sealed: &SealedBlock<'_>,
        dest: &mut [u8],
    ) -> Result<(), ContentError> {
        let whole = sealed.ciphertext.len();
        if span.start_in_block == 0 && span.len == whole {
            return self.open_block(span.block_no, sealed, dest);
        }
        let mut plain = [0u8; PLAIN_BLOCK_LEN as usize];
        let plain = &mut plain[..whole];
        self.open_block(span.block_no, sealed, plain)?;
        let piece = plain
            .get(span.start_in_block..span.start_in_block + span.len)
            .ok_or(ContentError::BlockAuthentication {
                block_no: span.block_no,
            })?;
        dest.copy_from_slice(piece);
        Ok(())
    }
}
