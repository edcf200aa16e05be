//! The large module: `examples/bench/hashbank.c`, built by `examples/build.sh --bench`
//! (left alone when up to date), and the sizes of its sections.

use std::path::PathBuf;
use std::process::Command;

/// The module's bytes and what it is made of.
pub struct BigModule {
    /// The wasm.
    pub wasm: Vec<u8>,
    /// Bytes of its code section (the function bodies the compiler translates).
    pub code_bytes: usize,
    /// How many function bodies.
    pub functions: u32,
}

/// Builds (if needed) and reads the module.
pub fn build() -> BigModule {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .arg(root.join("examples/build.sh"))
        .arg("--bench")
        .status()
        .expect("run examples/build.sh");
    assert!(status.success(), "examples/build.sh --bench failed");
    let wasm = std::fs::read(root.join("examples/build/hashbank.wasm")).expect("hashbank.wasm");
    let (code_bytes, functions) = code_section(&wasm);
    BigModule {
        wasm,
        code_bytes,
        functions,
    }
}

/// Reads an unsigned LEB128 at `*at`, moving past it.
fn leb(bytes: &[u8], at: &mut usize) -> u64 {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte < 0x80 {
            return value;
        }
    }
}

/// The code section's size and function count.
fn code_section(wasm: &[u8]) -> (usize, u32) {
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let len = leb(wasm, &mut at) as usize;
        if id == 10 {
            let mut body = at;
            let count = leb(wasm, &mut body) as u32;
            return (len, count);
        }
        at += len;
    }
    panic!("the module has no code section")
}
