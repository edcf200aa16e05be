//! Module intake: what `sluice module put` (and a distributed batch) accepts.

use sluice_shared::{EntryPoint, ModuleHash};

/// The most bytes a module may have (the worker's default cap).
pub const MAX_MODULE_BYTES: usize = 32 << 20;

/// Why a module is refused at upload.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module is {size} bytes, over the {MAX_MODULE_BYTES}-byte cap")]
    TooLarge { size: usize },
    #[error("not valid WebAssembly text: {0}")]
    Wat(String),
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

/// The entry point a module offers when a job names none: `_start` if exported, else
/// the raw ABI's `process` if exported, else `_start` (which then fails as missing).
pub fn default_entry(wasm: &[u8]) -> EntryPoint {
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Ok(wasmparser::Payload::ExportSection(reader)) = payload {
            exports.extend(
                reader
                    .into_iter()
                    .filter_map(Result::ok)
                    .map(|e| e.name.to_owned()),
            );
        }
    }
    let has = |name: &str| exports.iter().any(|e| e == name);
    if !has("_start") && has("process") {
        EntryPoint::Raw {
            export: "process".into(),
        }
    } else {
        EntryPoint::Command
    }
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
    }
}
