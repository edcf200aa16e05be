//! `OUT/outputs.tar`: the outputs of an embedded batch as one tar archive (GNU
//! format, names longer than 100 bytes in GNU long-name entries), for a disk file
//! system where one file create and rename per job is what bounds the batch.
//!
//! The archive is valid after every append, whatever happens next: each entry is
//! written together with the end-of-archive blocks behind it (positioned writes), and
//! the next entry overwrites those blocks. An append that fails puts the blocks back
//! where the previous entry ended and cuts the file there. Appends are made by the
//! caller under the report's lock, right before the job's report line, so an archive
//! holds only jobs its report lists (a crash between the two leaves at most the last
//! entry unlisted).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The two zero blocks that end a tar archive.
const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];

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

    /// Writes the entry and the end blocks behind it from `self.end`; the entry's end.
    fn write_entry(&self, name: &str, len: u64, data: impl Read) -> std::io::Result<u64> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(len);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        let at = At {
            file: &self.file,
            pos: self.end,
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
        Ok(at.pos - END_OF_ARCHIVE.len() as u64)
    }
}

/// Positioned writes into the archive file from `pos` on.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for At<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
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
    }
}
