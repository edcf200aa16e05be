//! `OUT/outputs.tar`: the outputs of an embedded batch as one tar archive (GNU
//! format, names longer than 100 bytes in GNU long-name entries), for a disk file
//! system where one file create and rename per job is what bounds the batch.
//!
//! The archive is valid after every append, and a crash (even SIGKILL) cuts at most
//! the entry being written: an entry is written behind the previous one's end with
//! positioned writes, its long-name block, data, padding and the new end-of-archive
//! blocks first and its first header block last, in one write. Until that last write
//! the block where the entry starts is still the old end's zero block, so a reader
//! stops there and sees only the entries before (GNU tar warns of "a lone zero block"
//! and exits 0; the `tar` crate stops without a word). An append that fails puts the
//! end blocks back where the previous entry ended and cuts the file there, and
//! [`Archive::truncate_to`] takes an appended entry back when its report line cannot
//! be written. The caller appends right before the job's report line, so an archive
//! holds only jobs its report lists (a crash between the two leaves at most the last
//! entry unlisted).
//!
//! Every entry's owner name is [`OWNER`]: `--force` tells an archive of ours from
//! someone else's file named `outputs.tar` by it ([`written_by_sluice`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The two zero blocks that end a tar archive.
const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];

/// A tar block.
const BLOCK: usize = 512;

/// The owner name of every entry an embedded batch writes: the archive's mark.
pub(crate) const OWNER: &str = "sluice";

/// Whether the archive at `path` was written by a batch: its first entry's owner is
/// [`OWNER`], or it is an empty archive (a batch whose jobs all failed). Only the first
/// entry's headers are read.
pub(crate) fn written_by_sluice(path: &Path) -> std::io::Result<bool> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive.entries()?;
    match entries.next() {
        Some(Ok(entry)) => Ok(entry.header().username_bytes() == Some(OWNER.as_bytes())),
        Some(Err(_)) => Ok(false),
        // No entry: ours only if it is just the end blocks (any length a crash during
        // the first append can leave is at least that).
        None => Ok(len >= END_OF_ARCHIVE.len() as u64),
    }
}

/// An output archive being written.
pub(crate) struct Archive {
    path: PathBuf,
    file: File,
    /// Where the next entry goes: the end-of-archive blocks start here.
    end: u64,
    /// The modification time every entry gets: the batch's start.
    mtime: u64,
}

impl Archive {
    /// Creates the archive afresh at `path` (an empty, valid archive), never following
    /// a link planted there.
    pub(crate) fn create(path: &Path) -> std::io::Result<Self> {
        let file = super::outdir::create_part(path)?;
        file.write_all_at(&END_OF_ARCHIVE, 0)?;
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Ok(Archive {
            path: path.to_owned(),
            file,
            end: 0,
            mtime,
        })
    }

    /// The archive's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next entry goes (what [`Archive::truncate_to`] takes back to).
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Takes back every entry appended since [`Archive::end`] was `end`: the end blocks
    /// go there and the file is cut behind them.
    pub(crate) fn truncate_to(&mut self, end: u64) -> std::io::Result<()> {
        self.file.write_all_at(&END_OF_ARCHIVE, end)?;
        self.file.set_len(end + END_OF_ARCHIVE.len() as u64)?;
        self.end = end;
        Ok(())
    }

    /// Appends one regular file `name` of `len` bytes read from `data` (at most `len`
    /// are taken; fewer is an error). On error the archive is as it was before.
    pub(crate) fn append(&mut self, name: &str, len: u64, data: impl Read) -> std::io::Result<()> {
        match self.write_entry(name, len, data) {
            Ok(end) => {
                self.end = end;
                Ok(())
            }
            Err(error) => {
                // Back to the previous entry's end, whatever part of this one was written.
                let _ = self.file.write_all_at(&END_OF_ARCHIVE, self.end);
                let _ = self.file.set_len(self.end + END_OF_ARCHIVE.len() as u64);
                Err(error)
            }
        }
    }

    /// Writes the entry and the end blocks behind it from `self.end`, its first block
    /// last (see the module's doc); the entry's end.
    fn write_entry(&self, name: &str, len: u64, data: impl Read) -> std::io::Result<u64> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(len);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_username(OWNER)?;
        let at = At {
            file: &self.file,
            pos: self.end,
            start: self.end,
            first: Vec::with_capacity(BLOCK),
        };
        let mut builder = tar::Builder::new(BufWriter::with_capacity(64 << 10, at));
        let mut counted = Counted {
            inner: data.take(len),
            read: 0,
        };
        builder.append_data(&mut header, name, &mut counted)?;
        if counted.read != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the output ended after {} of {len} bytes", counted.read),
            ));
        }
        // Writes the end-of-archive blocks too.
        let at = builder
            .into_inner()?
            .into_inner()
            .map_err(|e| e.into_error())?;
        // Last, in one write: the block that makes the entry (and all behind it) seen.
        self.file.write_all_at(&at.first, at.start)?;
        Ok(at.pos - END_OF_ARCHIVE.len() as u64)
    }
}

/// Positioned writes into the archive file from `start` on, the first block held back
/// in `first` (the caller writes it last).
struct At<'a> {
    file: &'a File,
    pos: u64,
    start: u64,
    first: Vec<u8>,
}

impl Write for At<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let held = self.pos - self.start;
        if held < BLOCK as u64 {
            let n = buf.len().min(BLOCK - held as usize);
            self.first.extend_from_slice(&buf[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A reader that counts what it gave.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(File::open(path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn every_append_leaves_a_valid_archive_and_a_failed_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outputs.tar");
        let mut archive = Archive::create(&path).unwrap();
        assert!(entries(&path).is_empty());
        archive.append("a", 3, &b"abc"[..]).unwrap();
        let long = "n".repeat(180);
        archive.append(&long, 600, &[7u8; 600][..]).unwrap();
        let err = archive.append("short", 10, &b"four"[..]).unwrap_err();
        assert!(err.to_string().contains("4 of 10 bytes"), "{err}");
        archive.append("b", 0, &b""[..]).unwrap();
        assert_eq!(
            entries(&path),
            vec![
                ("a".to_owned(), b"abc".to_vec()),
                (long, vec![7u8; 600]),
                ("b".to_owned(), Vec::new()),
            ]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len() % 512, 0);
        assert!(written_by_sluice(&path).unwrap());
    }

    /// Reads the archive file from disk in the middle of the append it is part of.
    struct Peek<'a> {
        path: &'a Path,
        left: usize,
        seen: Vec<Vec<(String, Vec<u8>)>>,
    }

    impl Read for Peek<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            // What a reader (or a crash now) would find: only the entries before.
            self.seen.push(entries(self.path));
            let n = buf.len().min(self.left).min(4096);
            buf[..n].fill(b'x');
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_append_cut_at_any_point_leaves_the_entries_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outputs.tar");
        let mut archive = Archive::create(&path).unwrap();
        archive.append("a", 3, &b"abc"[..]).unwrap();
        let long = "l".repeat(300);
        let mut peek = Peek {
            path: &path,
            left: 200_000,
            seen: Vec::new(),
        };
        archive.append(&long, 200_000, &mut peek).unwrap();
        assert!(peek.seen.len() > 10, "{}", peek.seen.len());
        for seen in &peek.seen {
            assert_eq!(seen, &vec![("a".to_owned(), b"abc".to_vec())]);
        }
        assert_eq!(entries(&path).len(), 2);
        // Taken back: as it was before.
        archive.truncate_to(512 + 512).unwrap();
        assert_eq!(entries(&path), vec![("a".to_owned(), b"abc".to_vec())]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024 + 1024);
        archive.append("b", 1, &b"b"[..]).unwrap();
        assert_eq!(entries(&path).len(), 2);
    }

    #[test]
    fn a_foreign_file_is_not_taken_for_an_archive_of_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outputs.tar");
        Archive::create(&path).unwrap();
        assert!(
            written_by_sluice(&path).unwrap(),
            "an empty archive of ours"
        );
        std::fs::write(&path, b"not a tar").unwrap();
        assert!(!written_by_sluice(&path).unwrap());
        let mut builder = tar::Builder::new(File::create(&path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_username("someone").unwrap();
        header.set_cksum();
        builder.append_data(&mut header, "f", &b"x"[..]).unwrap();
        builder.finish().unwrap();
        drop(builder);
        assert!(!written_by_sluice(&path).unwrap());
    }
}
