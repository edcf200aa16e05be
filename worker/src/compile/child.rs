//! `sluice-worker compile`: the child side of out-of-process compilation. It limits its
//! own address space and CPU time before it reads anything, reads one module from
//! stdin, compiles it with [`code_config`] for the requested engine and writes the
//! serialized artifact to stdout. How it ended is its exit status ([`status`]), and
//! for a refused module its one-line reason on stderr.

use std::io::{Read, Write};

use rlimit::Resource;

use super::engine::{EngineSettings, Metering, code_config};

/// The child's exit statuses, read by the parent ([`super::Compiler`]).
pub mod status {
    /// The artifact is on stdout.
    pub const OK: u8 = 0;
    /// The module is not valid WebAssembly (or WAT); the reason is on stderr.
    pub const INVALID: u8 = 65;
    /// An allocation or mapping failed under the address-space limit.
    pub const OUT_OF_MEMORY: u8 = 70;
    /// The child could not set its limits or build its engine, or stdin/stdout failed.
    pub const FAILED: u8 = 71;
}

/// What the parent tells the child on its command line: the engine (the code-shaping
/// [`EngineSettings`] and the [`Metering`]) and the limits it must put on itself.
#[derive(clap::Args, Clone, Debug)]
pub struct CompileArgs {
    /// The engine to compile for: `off` or `fuel`.
    #[arg(long)]
    pub metering: Metering,
    /// The sandbox's `max_wasm_stack_bytes`.
    #[arg(long)]
    pub max_wasm_stack: usize,
    /// Address-space limit (RLIMIT_AS) in bytes.
    #[arg(long)]
    pub memory: u64,
    /// CPU-time limit (RLIMIT_CPU) in whole seconds.
    #[arg(long)]
    pub cpu_seconds: u64,
    /// Largest module read from stdin, in bytes.
    #[arg(long)]
    pub max_module_bytes: u64,
}

impl CompileArgs {
    /// The arguments after `compile` that make a child compile for `settings` and
    /// `metering` under these limits.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            format!("--metering={}", self.metering.as_str()),
            format!("--max-wasm-stack={}", self.max_wasm_stack),
            format!("--memory={}", self.memory),
            format!("--cpu-seconds={}", self.cpu_seconds),
            format!("--max-module-bytes={}", self.max_module_bytes),
        ]
    }
}

/// Runs the child and returns its exit status.
pub fn run(args: &CompileArgs) -> u8 {
    match compile(args) {
        Ok(()) => status::OK,
        Err((code, message)) => {
            // One line: the parent puts it in the job's outcome.
            let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(std::io::stderr(), "{line}");
            code
        }
    }
}

fn compile(args: &CompileArgs) -> Result<(), (u8, String)> {
    let failed = |what: &str, e: &dyn std::fmt::Display| (status::FAILED, format!("{what}: {e}"));
    // Limits first: nothing the module decides runs before them.
    rlimit::setrlimit(Resource::AS, args.memory, args.memory)
        .map_err(|e| failed("setting the address-space limit", &e))?;
    // At the soft limit the kernel sends SIGXCPU (which ends the child); the hard limit
    // a second later is the SIGKILL behind it.
    rlimit::setrlimit(
        Resource::CPU,
        args.cpu_seconds,
        args.cpu_seconds.saturating_add(1),
    )
    .map_err(|e| failed("setting the CPU limit", &e))?;

    let mut wasm = Vec::new();
    std::io::stdin()
        .lock()
        .take(args.max_module_bytes.saturating_add(1))
        .read_to_end(&mut wasm)
        .map_err(|e| failed("reading the module from stdin", &e))?;
    if wasm.len() as u64 > args.max_module_bytes {
        return Err((
            status::INVALID,
            format!("module larger than {} bytes", args.max_module_bytes),
        ));
    }

    let settings = EngineSettings {
        max_wasm_stack_bytes: args.max_wasm_stack,
    };
    let engine = wasmtime::Engine::new(&code_config(&settings, args.metering))
        .map_err(|e| failed("building the engine", &format!("{e:#}")))?;
    let artifact = engine.precompile_module(&wasm).map_err(|e| {
        let out_of_memory = e.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
        });
        let code = if out_of_memory {
            status::OUT_OF_MEMORY
        } else {
            status::INVALID
        };
        (code, crate::sandbox::describe(&e))
    })?;
    drop(wasm);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&artifact)
        .and_then(|()| stdout.flush())
        .map_err(|e| failed("writing the artifact", &e))
}
