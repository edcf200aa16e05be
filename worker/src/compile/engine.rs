//! The engine configuration that decides compiled code, in one function: the parent's
//! [`Sandbox`](crate::Sandbox) and the `sluice-worker compile` child both build their
//! engine from [`code_config`], so an artifact the child serializes loads in the parent.
//!
//! What the child is told ([`EngineSettings`] plus the [`Metering`]) is every
//! [`SandboxConfig`](crate::SandboxConfig) value that reaches `wasmtime::Config`
//! outside the allocator. The parent then adds only the pooling allocator, which is a
//! runtime choice (it is not part of an artifact's compatibility check) and would make
//! the child reserve every pool slot's address space under its memory limit.

use wasmtime::Config;

/// Which of the two engines: jobs with a fuel budget run on the metered one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metering {
    /// No fuel accounting (the fast engine).
    Off = 0,
    /// Fuel accounting on: compiled code counts instructions.
    Fuel = 1,
}

impl Metering {
    /// Both engines, in index order.
    pub const ALL: [Metering; 2] = [Metering::Off, Metering::Fuel];

    /// The engine's index in the sandbox.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name on the child's command line and in messages: `off` or `fuel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Metering::Off => "off",
            Metering::Fuel => "fuel",
        }
    }
}

impl std::str::FromStr for Metering {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(Metering::Off),
            "fuel" => Ok(Metering::Fuel),
            other => Err(format!("metering is `off` or `fuel`, got {other:?}")),
        }
    }
}

/// The [`SandboxConfig`](crate::SandboxConfig) values that shape an engine's code; the
/// parent passes them to the compile child on its command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Native stack a guest may use
    /// ([`SandboxConfig::max_wasm_stack_bytes`](crate::SandboxConfig::max_wasm_stack_bytes)).
    pub max_wasm_stack_bytes: usize,
}

impl EngineSettings {
    /// The settings of a sandbox built from `config`.
    pub fn of(config: &crate::SandboxConfig) -> Self {
        EngineSettings {
            max_wasm_stack_bytes: config.max_wasm_stack_bytes,
        }
    }
}

/// The engine configuration both the sandbox and the compile child use: everything
/// but the instance allocator.
pub fn code_config(settings: &EngineSettings, metering: Metering) -> Config {
    let mut config = Config::new();
    config
        .memory_init_cow(true)
        .epoch_interruption(true)
        .consume_fuel(matches!(metering, Metering::Fuel))
        .max_wasm_stack(settings.max_wasm_stack_bytes);
    config
}
