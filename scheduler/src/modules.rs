//! Module intake: what `sluice module put` (and a distributed batch) accepts.
//!
//! Parsing WAT and validating wasm are CPU- and memory-heavy and run in time linear in
//! what a client sends, so the service runs them off the async threads
//! ([`prepare_off_thread`]), at most [`MAX_CONCURRENT_VALIDATIONS`] at once, and caps
//! WAT text well below the binary cap (WAT expands several-fold while parsed).
//!
//! Intake also reads what a module offers ([`metadata`]: size, exports, imports,
//! default entry point) for the module store to keep beside the bytes.

use std::sync::Arc;

use sluice_shared::module_meta::{ModuleImport, ModuleMeta};
use sluice_shared::{EntryPoint, ModuleHash};
use tokio::sync::Semaphore;

/// The most bytes a module may have: the rule the worker's default cap follows too
/// ([`sluice_shared::job::MAX_MODULE_BYTES`]).
pub const MAX_MODULE_BYTES: usize = sluice_shared::job::MAX_MODULE_BYTES as usize;

/// The most bytes of WebAssembly text accepted: real modules arrive as binaries; text
/// is for small hand-written ones, and parsing it costs many times its size in memory.
pub const MAX_WAT_BYTES: usize = 4 << 20;

/// Most module validations running at once in one process: each may hold a module,
/// its parsed form and the validator's state, so this bounds their memory together.
pub const MAX_CONCURRENT_VALIDATIONS: usize = 2;

/// Why a module is refused at upload.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module is over [`MAX_MODULE_BYTES`].
    #[error("module is {size} bytes, over the {MAX_MODULE_BYTES}-byte cap")]
    TooLarge {
        /// The module's size in bytes.
        size: usize,
    },
    /// WebAssembly text over [`MAX_WAT_BYTES`].
    #[error(
        "WebAssembly text is {size} bytes, over the {MAX_WAT_BYTES}-byte cap for text (upload a binary .wasm)"
    )]
    TextTooLarge {
        /// The text's size in bytes.
        size: usize,
    },
    /// The validation task ended without an answer.
    #[error("module validation did not finish: {0}")]
    Interrupted(String),
    /// The text does not parse as WebAssembly text.
    #[error("not valid WebAssembly text: {0}")]
    Wat(String),
    /// The bytes are not a valid WebAssembly module.
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
}

/// Turns WAT into wasm (wasm passes through), checks the size cap and validates the
/// module with wasmparser, so garbage never reaches a worker. Returns the bytes to
/// store and their hash.
pub fn prepare(bytes: &[u8]) -> Result<(Vec<u8>, ModuleHash), ModuleError> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge { size: bytes.len() });
    }
    let wasm = if bytes.starts_with(b"\0asm") {
        bytes.to_vec()
    } else {
        if bytes.len() > MAX_WAT_BYTES {
            return Err(ModuleError::TextTooLarge { size: bytes.len() });
        }
        wat::parse_bytes(bytes)
            .map_err(|e| ModuleError::Wat(e.to_string()))?
            .into_owned()
    };
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge { size: wasm.len() });
    }
    wasmparser::Validator::new()
        .validate_all(&wasm)
        .map_err(|e| ModuleError::Invalid(e.to_string()))?;
    let hash = ModuleHash::of(&wasm);
    Ok((wasm, hash))
}

/// Validations running or waiting, shared by every caller in the process.
fn validations() -> &'static Arc<Semaphore> {
    static PERMITS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(MAX_CONCURRENT_VALIDATIONS)))
}

/// [`prepare`] on a blocking thread, at most [`MAX_CONCURRENT_VALIDATIONS`] at once, so
/// the async threads (and `/healthz`) keep answering while big modules are checked.
/// `on_turn` runs when this validation gets its turn; what it returns is held until the
/// validation ends (a metrics guard, say), panics included.
pub async fn prepare_off_thread<G: Send + 'static>(
    bytes: axum::body::Bytes,
    on_turn: impl FnOnce() -> G + Send + 'static,
) -> Result<(Vec<u8>, ModuleHash, ModuleMeta), ModuleError> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge { size: bytes.len() });
    }
    if !bytes.starts_with(b"\0asm") && bytes.len() > MAX_WAT_BYTES {
        return Err(ModuleError::TextTooLarge { size: bytes.len() });
    }
    let permit = validations()
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ModuleError::Interrupted(e.to_string()))?;
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _turn = on_turn();
        prepare(&bytes).map(|(wasm, hash)| {
            let meta = metadata(&wasm);
            (wasm, hash, meta)
        })
    });
    work.await
        .map_err(|e| ModuleError::Interrupted(e.to_string()))?
}

/// What a module offers, read in one pass with wasmparser: its size, exports and
/// imports (capped, see [`ModuleMeta::new`]) and the entry point a job naming none
/// runs, by the shared rule ([`EntryPoint::default_for`]) over every export. Sections
/// that do not parse are skipped (intake validates a module before this).
pub fn metadata(wasm: &[u8]) -> ModuleMeta {
    let mut exports = Vec::new();
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::ExportSection(reader)) => exports.extend(
                reader
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|e| e.name.to_owned()),
            ),
            Ok(wasmparser::Payload::ImportSection(reader)) => imports.extend(
                reader
                    .into_imports()
                    .filter_map(Result::ok)
                    .map(|i| ModuleImport {
                        module: i.module.to_owned(),
                        name: i.name.to_owned(),
                    }),
            ),
            _ => {}
        }
    }
    ModuleMeta::new(wasm.len() as u64, exports, imports)
}

/// The entry point a module offers when a job names none ([`metadata`]'s).
pub fn default_entry(wasm: &[u8]) -> EntryPoint {
    metadata(wasm).default_entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wat_becomes_validated_wasm_and_garbage_is_refused() {
        let (wasm, hash) = prepare(b"(module (func (export \"_start\")))").unwrap();
        assert!(wasm.starts_with(b"\0asm"));
        assert_eq!(hash, ModuleHash::of(&wasm));
        assert!(matches!(
            prepare(b"\0asm\x01\0\0\0\xff"),
            Err(ModuleError::Invalid(_))
        ));
        assert!(matches!(prepare(b"hello"), Err(ModuleError::Wat(_))));
        let (raw, _) =
            prepare(b"(module (memory (export \"memory\") 1) (func (export \"process\")))")
                .unwrap();
        assert_eq!(
            default_entry(&raw),
            EntryPoint::Raw {
                export: "process".into()
            }
        );
        assert_eq!(default_entry(&wasm), EntryPoint::Command);
        let huge = vec![b' '; MAX_MODULE_BYTES + 1];
        assert!(matches!(prepare(&huge), Err(ModuleError::TooLarge { .. })));
        let wordy = vec![b' '; MAX_WAT_BYTES + 1];
        assert!(matches!(
            prepare(&wordy),
            Err(ModuleError::TextTooLarge { .. })
        ));
    }

    #[test]
    fn metadata_lists_exports_and_imports_and_the_default_entry() {
        let (wasm, _) = prepare(
            br#"(module
                 (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (import "env" "mem" (memory 1))
                 (func (export "process"))
                 (global (export "g") i32 (i32.const 0)))"#,
        )
        .unwrap();
        let meta = metadata(&wasm);
        assert_eq!(meta.size, wasm.len() as u64);
        assert_eq!(meta.exports, ["process", "g"]);
        assert_eq!(meta.exports_omitted, 0);
        assert_eq!(
            meta.imports,
            [
                ModuleImport {
                    module: "wasi_snapshot_preview1".into(),
                    name: "fd_write".into()
                },
                ModuleImport {
                    module: "env".into(),
                    name: "mem".into()
                }
            ]
        );
        assert_eq!(
            meta.default_entry,
            EntryPoint::Raw {
                export: "process".into()
            }
        );
    }

    #[test]
    fn metadata_caps_names_but_decides_the_entry_over_all_of_them() {
        use sluice_shared::module_meta::{MAX_META_NAME_BYTES, MAX_META_NAMES};
        let long = "n".repeat(MAX_META_NAME_BYTES + 1);
        let mut wat = String::from("(module");
        for i in 0..MAX_META_NAMES + 3 {
            wat.push_str(&format!(" (import \"env\" \"i{i}\" (func))"));
        }
        wat.push_str(" (func $f)");
        for i in 0..MAX_META_NAMES {
            wat.push_str(&format!(" (export \"e{i}\" (func $f))"));
        }
        wat.push_str(&format!(" (export \"{long}\" (func $f))"));
        wat.push_str(" (export \"process\" (func $f)))");
        let (wasm, _) = prepare(wat.as_bytes()).unwrap();
        let meta = metadata(&wasm);
        assert_eq!(meta.exports.len(), MAX_META_NAMES);
        assert_eq!(meta.exports_omitted, 2);
        assert!(!meta.exports.iter().any(|e| e == "process"));
        assert_eq!(
            meta.default_entry,
            EntryPoint::Raw {
                export: "process".into()
            }
        );
        assert_eq!(meta.imports.len(), MAX_META_NAMES);
        assert_eq!(meta.imports_omitted, 3);
    }
}
