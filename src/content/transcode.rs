//! Whole-file transcoding between storage forms: plain → encrypted,
//! encrypted → plain, and encrypted → encrypted under another DEK
//! generation. Used by `vm encrypt`, `vm encrypt-disks` / `decrypt-disks`
//! and deep re-key.
//!
//! Holes stay holes: only the source's data regions are copied (found with
//! SEEK_DATA/SEEK_HOLE, and all-zero 4 KiB blocks are skipped too), and the
//! destination gets its size from a truncate, which leaves the gaps sparse.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::allocation::SeekTarget;
use super::encrypted_file::{ContentError, EncryptedFile};
use crate::crypto::keyring::VmKeyring;
use crate::format::content_layout::ContentLayout;
use crate::format::offsets::PLAIN_BLOCK_LEN;

/// Bytes copied per step.
const CHUNK: u64 = 1 << 20;

/// Where a transcoding reads plaintext from.
pub enum Source<'a> {
    /// A plain file.
    Plain(&'a File),
    /// An encrypted file, opened with the VM's keyring, in the VM's content
    /// format.
    Encrypted(&'a File, Arc<VmKeyring>, ContentLayout),
}

/// Where a transcoding writes plaintext to.
pub enum Destination<'a> {
    /// A plain file.
    Plain(&'a File),
    /// An encrypted file, written under the keyring's current generation in
    /// the given content format.
    Encrypted(&'a File, Arc<VmKeyring>, ContentLayout),
}

/// The next data region at or after `offset`: (start, end), or `None`.
fn plain_data_region(
    file: &File,
    offset: u64,
    size: u64,
) -> Result<Option<(u64, u64)>, ContentError> {
    use rustix::fs::{seek, SeekFrom};
    if offset >= size {
        return Ok(None);
    }
    let start = match seek(file, SeekFrom::Data(offset)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(e) => return Err(ContentError::Io(e.into())),
    };
    let end = seek(file, SeekFrom::Hole(start)).map_err(|e| ContentError::Io(e.into()))?;
    Ok(Some((start, end.min(size))))
}

/// Copies the plaintext of `source` into the empty `destination`, keeping
/// holes. Returns the number of plaintext bytes (the file size).
/// `on_progress` is called with the bytes done so far.
pub fn transcode(
    source: Source<'_>,
    destination: Destination<'_>,
    mut on_progress: impl FnMut(u64),
) -> Result<u64, ContentError> {
    let reader = match &source {
        Source::Encrypted(_, keyring, layout) => Some(EncryptedFile::new(keyring.clone(), *layout)),
        Source::Plain(_) => None,
    };
    let writer = match &destination {
        Destination::Encrypted(_, keyring, layout) => {
            Some(EncryptedFile::new(keyring.clone(), *layout))
        }
        Destination::Plain(_) => None,
    };
    let size = match (&source, &reader) {
        (Source::Plain(file), _) => file.metadata()?.len(),
        (Source::Encrypted(file, ..), Some(reader)) => reader.plain_size(file)?,
        _ => unreachable!("an encrypted source always has a reader"),
    };
    let mut offset = 0;
    let mut buf = Vec::with_capacity(CHUNK as usize);
    while offset < size {
        let region = match (&source, &reader) {
            (Source::Plain(file), _) => plain_data_region(file, offset, size)?,
            (Source::Encrypted(file, ..), Some(reader)) => {
                match reader.seek(file, offset, SeekTarget::Data) {
                    Ok(start) => Some((start, reader.seek(file, start, SeekTarget::Hole)?)),
                    Err(ContentError::Io(e)) if e.raw_os_error() == Some(libc::ENXIO) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => unreachable!("an encrypted source always has a reader"),
        };
        let Some((start, end)) = region else { break };
        let mut pos = start;
        while pos < end {
            let len = CHUNK.min(end - pos);
            buf.clear();
            match (&source, &reader) {
                (Source::Plain(file), _) => {
                    buf.resize(len as usize, 0);
                    file.read_exact_at(&mut buf, pos)?;
                }
                (Source::Encrypted(file, ..), Some(reader)) => {
                    let n = reader.read_into(file, pos, len, &mut buf)?;
                    buf.truncate(n);
                }
                _ => unreachable!(),
            }
            write_skipping_zero_blocks(&destination, writer.as_ref(), pos, &buf)?;
            pos += len;
            on_progress(pos);
        }
        offset = end;
    }
    match (&destination, &writer) {
        (Destination::Plain(file), _) => file.set_len(size)?,
        (Destination::Encrypted(file, ..), Some(writer)) => writer.truncate(file, size)?,
        _ => unreachable!("an encrypted destination always has a writer"),
    }
    on_progress(size);
    Ok(size)
}

/// Writes `data` at `offset`, leaving 4 KiB-aligned all-zero blocks
/// unwritten so they stay holes.
fn write_skipping_zero_blocks(
    destination: &Destination<'_>,
    writer: Option<&EncryptedFile>,
    offset: u64,
    data: &[u8],
) -> Result<(), ContentError> {
    let block = PLAIN_BLOCK_LEN as usize;
    let mut run_start: Option<usize> = None;
    let flush = |from: usize, to: usize| -> Result<(), ContentError> {
        let at = offset + from as u64;
        match (destination, writer) {
            (Destination::Plain(file), _) => file
                .write_all_at(&data[from..to], at)
                .map_err(ContentError::from),
            (Destination::Encrypted(file, ..), Some(w)) => w.write(file, at, &data[from..to]),
            _ => unreachable!("an encrypted destination always has a writer"),
        }
    };
    let mut i = 0;
    while i < data.len() {
        let end = (i + block).min(data.len());
        let aligned = (offset + i as u64) % PLAIN_BLOCK_LEN == 0 && end - i == block;
        let zero = aligned && data[i..end].iter().all(|&b| b == 0);
        match (zero, run_start) {
            (true, Some(s)) => {
                flush(s, i)?;
                run_start = None;
            }
            (false, None) => run_start = Some(i),
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run_start {
        flush(s, data.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::Dek;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    fn keyring(generations: &[u32], current: u32) -> Arc<VmKeyring> {
        let deks: BTreeMap<u32, Dek> = generations
            .iter()
            .map(|&g| (g, Dek::from_bytes([g as u8; 32])))
            .collect();
        Arc::new(VmKeyring::new([5; 16], current, deks))
    }

    fn file(dir: &tempfile::TempDir, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap()
    }

    #[test]
    fn plain_to_encrypted_to_new_generation_and_format_to_plain_round_trips_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let plain = file(&dir, "plain");
        plain.set_len(64 << 20).unwrap();
        plain.write_all_at(b"start", 0).unwrap();
        plain.write_all_at(&vec![7u8; 100_000], 10 << 20).unwrap();
        plain.write_all_at(b"end", (64 << 20) - 3).unwrap();
        let expected = std::fs::read(dir.path().join("plain")).unwrap();

        let enc1 = file(&dir, "enc1");
        transcode(
            Source::Plain(&plain),
            Destination::Encrypted(&enc1, keyring(&[1], 1), ContentLayout::Interleaved),
            |_| {},
        )
        .unwrap();
        assert!(
            enc1.metadata().unwrap().blocks() * 512 < 2 << 20,
            "holes stay holes"
        );

        let enc2 = file(&dir, "enc2");
        let both = keyring(&[1, 2], 2);
        transcode(
            // Also from content format 1 to format 2.
            Source::Encrypted(&enc1, both.clone(), ContentLayout::Interleaved),
            Destination::Encrypted(&enc2, both, ContentLayout::PageAligned),
            |_| {},
        )
        .unwrap();
        let mut header = [0u8; 12];
        enc2.read_exact_at(&mut header, 0).unwrap();
        assert_eq!(
            u32::from_be_bytes(header[8..12].try_into().unwrap()),
            2,
            "re-encrypted under generation 2"
        );
        assert_eq!(header[5], 2, "in content format 2");
        assert!(
            enc2.metadata().unwrap().blocks() * 512 < 2 << 20,
            "holes stay holes"
        );

        let back = file(&dir, "back");
        let mut last = 0;
        transcode(
            Source::Encrypted(&enc2, keyring(&[2], 2), ContentLayout::PageAligned),
            Destination::Plain(&back),
            |done| last = done,
        )
        .unwrap();
        assert_eq!(last, 64 << 20);
        assert_eq!(std::fs::read(dir.path().join("back")).unwrap(), expected);
        assert!(back.metadata().unwrap().blocks() * 512 < 2 << 20);
    }
}
