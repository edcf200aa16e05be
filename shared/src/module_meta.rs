//! What a stored module offers, recorded beside its bytes when it is uploaded, so a
//! submitter picks a job's entry point without downloading the module.
//!
//! The scheduler's intake computes a [`ModuleMeta`] while it validates a module; the
//! module store keeps it (as [`ModuleMeta::encode`] writes it: JSON with a format
//! version) under `sluice:{q}:module:<hash>:meta`, with the bytes' lifetime. Export and
//! import lists are capped ([`MAX_META_NAMES`] names of at most [`MAX_META_NAME_BYTES`]
//! bytes each); what the caps leave out is counted, never silently lost. The default
//! entry point is decided over every export, before the cap.

use serde::{Deserialize, Serialize};

use crate::job::EntryPoint;

/// The format version [`ModuleMeta::encode`] writes and [`ModuleMeta::decode`] reads.
pub const META_FORMAT_VERSION: u32 = 1;

/// Most export names (and, separately, imports) a [`ModuleMeta`] keeps.
pub const MAX_META_NAMES: usize = 256;

/// Longest name (export name, import module or import name), in bytes, a [`ModuleMeta`]
/// keeps; a longer one is counted as omitted.
pub const MAX_META_NAME_BYTES: usize = 128;

/// One function, memory, table, global or tag a module imports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleImport {
    /// The import's module (`wasi_snapshot_preview1`, say).
    pub module: String,
    /// The imported item's name.
    pub name: String,
}

/// A stored module's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleMeta {
    /// The module's size in bytes.
    pub size: u64,
    /// Its export names, in module order, at most [`MAX_META_NAMES`].
    pub exports: Vec<String>,
    /// Exports left out of `exports` (over the count cap or the name-length cap).
    pub exports_omitted: u32,
    /// Its imports, in module order, at most [`MAX_META_NAMES`].
    pub imports: Vec<ModuleImport>,
    /// Imports left out of `imports` (over the count cap or the name-length cap).
    pub imports_omitted: u32,
    /// The entry point a job naming none runs ([`EntryPoint::default_for`] over every
    /// export).
    pub default_entry: EntryPoint,
}

/// Why stored metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaDecodeError {
    /// Written by a build with another format version (a newer one, say).
    #[error(
        "module metadata of format version {found} (this build reads version {META_FORMAT_VERSION})"
    )]
    UnknownVersion {
        /// The version found.
        found: u32,
    },
    /// Not metadata this build (or any) wrote.
    #[error("malformed module metadata: {0}")]
    Malformed(String),
}

/// The stored form: the metadata behind its format version.
#[derive(Serialize)]
struct Stored<'a> {
    v: u32,
    meta: &'a ModuleMeta,
}

/// The stored form as read: the version first, the metadata only if it is known.
#[derive(Deserialize)]
struct Read {
    v: u32,
    meta: serde_json::Value,
}

impl ModuleMeta {
    /// Metadata of a module of `size` bytes from all its `exports` and `imports`: the
    /// default entry point over every export, then both lists capped.
    pub fn new(
        size: u64,
        exports: Vec<String>,
        imports: impl IntoIterator<Item = ModuleImport>,
    ) -> Self {
        let default_entry = EntryPoint::default_for(|name| exports.iter().any(|e| e == name));
        let (exports, exports_omitted) =
            cap(exports, |name: &String| name.len() <= MAX_META_NAME_BYTES);
        let (imports, imports_omitted) = cap(imports, |i: &ModuleImport| {
            i.module.len() <= MAX_META_NAME_BYTES && i.name.len() <= MAX_META_NAME_BYTES
        });
        ModuleMeta {
            size,
            exports,
            exports_omitted,
            imports,
            imports_omitted,
            default_entry,
        }
    }

    /// The stored form: JSON `{"v": META_FORMAT_VERSION, "meta": {...}}`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Stored {
            v: META_FORMAT_VERSION,
            meta: self,
        })
        .expect("module metadata serializes")
    }

    /// Reads the stored form; an unknown version or garbage is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaDecodeError> {
        let read: Read =
            serde_json::from_slice(bytes).map_err(|e| MetaDecodeError::Malformed(e.to_string()))?;
        if read.v != META_FORMAT_VERSION {
            return Err(MetaDecodeError::UnknownVersion { found: read.v });
        }
        serde_json::from_value(read.meta).map_err(|e| MetaDecodeError::Malformed(e.to_string()))
    }
}

/// The first [`MAX_META_NAMES`] items that `fits`, and how many were left out.
fn cap<T>(items: impl IntoIterator<Item = T>, fits: impl Fn(&T) -> bool) -> (Vec<T>, u32) {
    let mut kept = Vec::new();
    let mut omitted = 0u32;
    for item in items {
        if kept.len() < MAX_META_NAMES && fits(&item) {
            kept.push(item);
        } else {
            omitted = omitted.saturating_add(1);
        }
    }
    (kept, omitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_its_version_and_refuses_others() {
        let meta = ModuleMeta::new(
            8,
            vec!["memory".into(), "process".into()],
            [ModuleImport {
                module: "env".into(),
                name: "f".into(),
            }],
        );
        assert_eq!(
            meta.default_entry,
            EntryPoint::Raw {
                export: "process".into()
            }
        );
        let bytes = meta.encode();
        assert_eq!(ModuleMeta::decode(&bytes).unwrap(), meta);
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":1", "\"v\":2");
        assert!(matches!(
            ModuleMeta::decode(newer.as_bytes()),
            Err(MetaDecodeError::UnknownVersion { found: 2 })
        ));
        assert!(matches!(
            ModuleMeta::decode(b"\0asm"),
            Err(MetaDecodeError::Malformed(_))
        ));
    }

    #[test]
    fn caps_count_what_they_leave_out_after_deciding_the_entry() {
        let mut exports: Vec<String> = (0..MAX_META_NAMES + 5).map(|i| format!("e{i}")).collect();
        exports.push("x".repeat(MAX_META_NAME_BYTES + 1));
        exports.push("_start".into());
        let meta = ModuleMeta::new(1, exports, []);
        assert_eq!(meta.exports.len(), MAX_META_NAMES);
        assert_eq!(meta.exports_omitted, 7);
        assert_eq!(meta.default_entry, EntryPoint::Command);
    }
}
