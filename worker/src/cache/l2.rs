//! L2: artifacts on local disk, under a configured directory, bounded in bytes.
//!
//! Each artifact is two files named after its key and the secret's public id:
//! `<module>-<engine>-<key id>.tag` (its 32-byte integrity tag) and
//! `<module>-<engine>-<key id>.cwasm` (the artifact wasmtime maps).
//! Both are written atomically: into a temporary file in the same directory, then
//! renamed over the final name; the tag first, so an artifact is never visible without
//! a tag, and a file is never rewritten in place (a job mapping the old artifact keeps
//! the old inode). A reader opens the artifact once, checks the tag through that
//! descriptor and maps that same descriptor.
//!
//! The bound is kept by this process's index of the directory (read at start, oldest
//! first by modification time, then in order of use): past it the least recently used
//! artifacts are deleted. Several workers may share a directory; each keeps the bound
//! over what it knows of, so the directory can hold up to the bound per worker.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::key::ArtifactKey;
use super::mac::Tag;

/// Why an L2 operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory could not be created or listed.
    #[error("artifact directory {dir}: {error}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the file system said.
        error: io::Error,
    },
    /// An artifact file could not be read or written.
    #[error("artifact file {path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        error: io::Error,
    },
    /// A tag file does not hold a tag.
    #[error("artifact tag {0} is not 32 bytes")]
    BadTag(PathBuf),
}

struct Index {
    /// File stem → (artifact bytes, last use).
    entries: HashMap<String, (u64, u64)>,
    held: u64,
    clock: u64,
}

/// The artifact directory.
pub struct Disk {
    dir: PathBuf,
    /// The secret's public id, in every file name.
    key_id: String,
    max_bytes: u64,
    index: Mutex<Index>,
}

/// What [`Disk::open`] found: the artifact file, open, and its stored tag.
pub struct Stored {
    /// The artifact, opened once (check and map this descriptor).
    pub file: File,
    /// Its tag.
    pub tag: Tag,
}

const ARTIFACT: &str = "cwasm";
const TAG: &str = "tag";
const TEMP_PREFIX: &str = ".tmp-";

impl Disk {
    /// The directory `dir` (created if missing), bounded to `max_bytes`; indexes the
    /// artifacts already there and removes temporary files a crash left behind.
    pub fn open_dir(dir: &Path, max_bytes: u64, key_id: &str) -> Result<Self, DiskError> {
        let dir_err = |error| DiskError::Dir {
            dir: dir.to_owned(),
            error,
        };
        fs::create_dir_all(dir).map_err(dir_err)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(stem) = name.strip_suffix(&format!(".{ARTIFACT}")) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            found.push((meta.modified().ok(), stem.to_owned(), meta.len()));
        }
        found.sort();
        let mut index = Index {
            entries: HashMap::new(),
            held: 0,
            clock: 0,
        };
        for (_, stem, len) in found {
            index.clock += 1;
            index.held += len;
            index.entries.insert(stem, (len, index.clock));
        }
        let disk = Disk {
            dir: dir.to_owned(),
            key_id: key_id.to_owned(),
            max_bytes,
            index: Mutex::new(index),
        };
        disk.evict(None);
        Ok(disk)
    }

    fn stem(&self, key: &ArtifactKey) -> String {
        format!("{key}-{}", self.key_id)
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{stem}.{ext}"))
    }

    /// The artifact stored under `key`, if any, opened, with its tag.
    pub fn open(&self, key: &ArtifactKey) -> Result<Option<Stored>, DiskError> {
        let stem = self.stem(key);
        let tag_path = self.path(&stem, TAG);
        let tag = match fs::read(&tag_path) {
            Ok(tag) => tag,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(DiskError::File {
                    path: tag_path,
                    error,
                });
            }
        };
        let tag = Tag(tag.try_into().map_err(|_| DiskError::BadTag(tag_path))?);
        let path = self.path(&stem, ARTIFACT);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(DiskError::File { path, error }),
        };
        let mut index = self.index.lock();
        index.clock += 1;
        let now = index.clock;
        if let Some(entry) = index.entries.get_mut(&stem) {
            entry.1 = now;
        }
        Ok(Some(Stored { file, tag }))
    }

    /// Stores `bytes` and their `tag` under `key` atomically, then deletes the least
    /// recently used artifacts past the bound.
    pub fn put(&self, key: &ArtifactKey, bytes: &[u8], tag: &Tag) -> Result<(), DiskError> {
        let stem = self.stem(key);
        self.write_atomic(&self.path(&stem, TAG), &tag.0)?;
        self.write_atomic(&self.path(&stem, ARTIFACT), bytes)?;
        {
            let mut index = self.index.lock();
            index.clock += 1;
            let now = index.clock;
            let len = bytes.len() as u64;
            if let Some((old, _)) = index.entries.insert(stem.clone(), (len, now)) {
                index.held -= old;
            }
            index.held += len;
        }
        self.evict(Some(&stem));
        Ok(())
    }

    /// Deletes the artifact under `key` (a bad one: its tag did not match).
    pub fn remove(&self, key: &ArtifactKey) {
        let stem = self.stem(key);
        self.remove_stem(&stem);
    }

    fn remove_stem(&self, stem: &str) {
        // The artifact first: a tag without an artifact is no entry.
        let _ = fs::remove_file(self.path(stem, ARTIFACT));
        let _ = fs::remove_file(self.path(stem, TAG));
        let mut index = self.index.lock();
        if let Some((len, _)) = index.entries.remove(stem) {
            index.held -= len;
        }
    }

    /// Writes `bytes` to a temporary file in the directory, syncs it and renames it to
    /// `path`.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut file = File::create_new(&temp)?;
            file.write_all(bytes)?;
            file.sync_data()?;
            fs::rename(&temp, path)
        })();
        result.map_err(|error| {
            let _ = fs::remove_file(&temp);
            DiskError::File {
                path: path.to_owned(),
                error,
            }
        })
    }

    /// Deletes least recently used artifacts (never `keep`) until within the bound.
    fn evict(&self, keep: Option<&str>) {
        loop {
            let victim = {
                let index = self.index.lock();
                if index.held <= self.max_bytes {
                    return;
                }
                index
                    .entries
                    .iter()
                    .filter(|(stem, _)| Some(stem.as_str()) != keep)
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(stem, _)| stem.clone())
            };
            match victim {
                Some(stem) => self.remove_stem(&stem),
                None => return,
            }
        }
    }

    /// Artifact bytes held.
    pub fn bytes(&self) -> u64 {
        self.index.lock().held
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use sluice_shared::ModuleHash;

    use super::*;
    use crate::cache::key::EngineFingerprint;

    fn key(n: u8) -> ArtifactKey {
        ArtifactKey {
            module: ModuleHash([n; 32]),
            engine: EngineFingerprint([9; 32]),
        }
    }

    fn read(disk: &Disk, k: u8) -> Option<(Vec<u8>, Tag)> {
        disk.open(&key(k)).unwrap().map(|mut stored| {
            let mut bytes = Vec::new();
            stored.file.read_to_end(&mut bytes).unwrap();
            (bytes, stored.tag)
        })
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_put_replaces_by_rename_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open_dir(dir.path(), 1 << 20, "k").unwrap();
        assert!(read(&disk, 1).is_none());
        disk.put(&key(1), b"first", &Tag([1; 32])).unwrap();
        // A reader that opened the first artifact keeps reading it after a rewrite.
        let mut open = disk.open(&key(1)).unwrap().unwrap();
        disk.put(&key(1), b"second", &Tag([2; 32])).unwrap();
        let mut old = Vec::new();
        open.file.read_to_end(&mut old).unwrap();
        assert_eq!(old, b"first");
        assert_eq!(read(&disk, 1), Some((b"second".to_vec(), Tag([2; 32]))));
        assert_eq!(disk.bytes(), 6);
        let stem = format!("{}-k", key(1));
        assert_eq!(
            names(dir.path()),
            [format!("{stem}.cwasm"), format!("{stem}.tag")]
        );
    }

    #[test]
    fn leftover_temp_files_are_removed_and_artifacts_indexed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = Disk::open_dir(dir.path(), 1 << 20, "k").unwrap();
            disk.put(&key(1), b"abc", &Tag([1; 32])).unwrap();
        }
        fs::write(dir.path().join(".tmp-crashed"), b"partial").unwrap();
        let disk = Disk::open_dir(dir.path(), 1 << 20, "k").unwrap();
        assert_eq!(disk.bytes(), 3);
        assert!(!dir.path().join(".tmp-crashed").exists());
        assert!(read(&disk, 1).is_some());
    }

    #[test]
    fn past_the_bound_the_least_recently_used_go() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open_dir(dir.path(), 100, "k").unwrap();
        disk.put(&key(1), &[0; 40], &Tag([1; 32])).unwrap();
        disk.put(&key(2), &[0; 40], &Tag([2; 32])).unwrap();
        // 1 is used, so 2 is the least recent.
        assert!(read(&disk, 1).is_some());
        disk.put(&key(3), &[0; 40], &Tag([3; 32])).unwrap();
        assert!(read(&disk, 2).is_none());
        assert!(read(&disk, 1).is_some() && read(&disk, 3).is_some());
        assert_eq!(disk.bytes(), 80);
        assert_eq!(names(dir.path()).len(), 4);
        // A bound smaller than what is there at start evicts at once, oldest first.
        drop(disk);
        let disk = Disk::open_dir(dir.path(), 50, "k").unwrap();
        assert_eq!(disk.bytes(), 40);
    }

    #[test]
    fn a_removed_artifact_is_gone_with_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::open_dir(dir.path(), 100, "k").unwrap();
        disk.put(&key(1), b"x", &Tag([1; 32])).unwrap();
        disk.remove(&key(1));
        assert!(read(&disk, 1).is_none());
        assert!(names(dir.path()).is_empty());
        assert_eq!(disk.bytes(), 0);
    }
}
