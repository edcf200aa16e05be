//! The raw ABI (see `docs/guest-abi.md`): the host copies each input chunk into guest
//! memory through `alloc`, calls the transform, and copies out the bytes it names.
//!
//! Every pointer and length the guest returns is checked against its memory before the
//! host touches it: a hostile guest can only fail its own job.

use std::io::Write;

use sluice_shared::Outcome;
use wasmtime::{Instance, Memory, Store, TypedFunc};

use crate::sandbox::{StoreState, missing_export};
use crate::streams::{GuestOutput, GuestStdin, WriteRefused};

/// The transform export a raw-ABI module offers by default.
pub const PROCESS: &str = sluice_shared::EntryPoint::RAW_EXPORT;
const ALLOC: &str = "alloc";
const FREE: &str = "free";
const FINISH: &str = "finish";
const MEMORY: &str = "memory";

/// How a run that did not succeed stopped.
pub(crate) enum RunError {
    /// Wasm stopped (trap, exit, interrupt): classified by the sandbox.
    Wasm(wasmtime::Error),
    /// Already a typed outcome.
    Outcome(Outcome),
}

fn abi_violation(message: String) -> RunError {
    RunError::Outcome(Outcome::Trap {
        code: "abi_violation".into(),
        message,
    })
}

struct Exports {
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    process: TypedFunc<(i32, i32), i64>,
    free: Option<TypedFunc<(i32, i32), ()>>,
    finish: Option<TypedFunc<(), i64>>,
}

impl Exports {
    fn find(
        store: &mut Store<StoreState>,
        instance: &Instance,
        process: &str,
    ) -> Result<Self, RunError> {
        let memory = instance.get_memory(&mut *store, MEMORY).ok_or_else(|| {
            RunError::Outcome(Outcome::MissingExport {
                name: MEMORY.into(),
                reason: "the raw ABI needs an exported memory".into(),
            })
        })?;
        let typed = |store: &mut Store<StoreState>, name: &str| -> Option<wasmtime::Extern> {
            instance.get_export(&mut *store, name)
        };
        let alloc = instance
            .get_typed_func(&mut *store, ALLOC)
            .map_err(|e| RunError::Outcome(missing_export(ALLOC, e)))?;
        let process = instance
            .get_typed_func(&mut *store, process)
            .map_err(|e| RunError::Outcome(missing_export(process, e)))?;
        // Optional exports: absent is fine, present with the wrong type is not.
        let free = match typed(store, FREE) {
            None => None,
            Some(_) => Some(
                instance
                    .get_typed_func(&mut *store, FREE)
                    .map_err(|e| RunError::Outcome(missing_export(FREE, e)))?,
            ),
        };
        let finish = match typed(store, FINISH) {
            None => None,
            Some(_) => Some(
                instance
                    .get_typed_func(&mut *store, FINISH)
                    .map_err(|e| RunError::Outcome(missing_export(FINISH, e)))?,
            ),
        };
        Ok(Exports {
            memory,
            alloc,
            process,
            free,
            finish,
        })
    }
}

/// What a transform's `i64` return value says.
#[derive(Debug, PartialEq, Eq)]
enum Returned {
    /// `[ptr, ptr + len)` of guest memory is output; both are unsigned 32-bit.
    Output { ptr: u32, len: u32 },
    /// The transform failed with this (positive) code.
    Failed(i32),
}

impl Returned {
    /// Decodes `(ptr << 32) | len`. A failure is a negative i32 sign-extended to i64
    /// (`-1` … `-2^31`): its high word is all ones and its low word ≥ 2^31, which as an
    /// output would end past 4 GiB, beyond any 32-bit memory. Every other value,
    /// pointers ≥ 2^31 included, is an output range.
    fn decode(returned: i64) -> Self {
        if (i64::from(i32::MIN)..0).contains(&returned) {
            return Returned::Failed(i32::try_from(returned.unsigned_abs()).unwrap_or(i32::MAX));
        }
        let bits = returned as u64;
        Returned::Output {
            ptr: (bits >> 32) as u32,
            len: bits as u32,
        }
    }
}

/// Copies the output a transform named (`(ptr << 32) | len`, or a negative i32 for
/// failure) into `stdout`.
fn emit(
    store: &Store<StoreState>,
    memory: &Memory,
    returned: i64,
    stdout: &GuestOutput<Box<dyn Write + Send>>,
) -> Result<(), RunError> {
    let (ptr, len) = match Returned::decode(returned) {
        Returned::Failed(code) => return Err(RunError::Outcome(Outcome::NonZeroExit { code })),
        Returned::Output { ptr, len } => (ptr as usize, len as usize),
    };
    if len == 0 {
        return Ok(());
    }
    let data = memory.data(store);
    let bytes = ptr
        .checked_add(len)
        .and_then(|end| data.get(ptr..end))
        .ok_or_else(|| {
            abi_violation(format!(
                "output [{ptr}, +{len}) is outside guest memory of {} bytes",
                data.len()
            ))
        })?;
    stdout.write_capped(bytes).map_err(|refused| match refused {
        WriteRefused::CapReached => RunError::Outcome(Outcome::OutputLimit {
            limit: stdout.cap(),
        }),
        WriteRefused::Sink(e) => RunError::Outcome(Outcome::HostError {
            reason: format!("writing output: {e}"),
        }),
        WriteRefused::Deadline => RunError::Outcome(Outcome::Timeout),
    })
}

/// Streams the whole input through the module, chunk by chunk.
pub(crate) fn run(
    store: &mut Store<StoreState>,
    instance: &Instance,
    process: &str,
    stdin: &GuestStdin,
    stdout: &GuestOutput<Box<dyn Write + Send>>,
    chunk_bytes: usize,
) -> Result<(), RunError> {
    let exports = Exports::find(store, instance, process)?;
    let mut chunk = vec![0u8; chunk_bytes.max(1)];
    loop {
        let n = stdin.read_into(&mut chunk).map_err(|e| {
            RunError::Outcome(if stdin.timed_out() {
                Outcome::Timeout
            } else {
                Outcome::InputUnavailable {
                    reason: e.to_string(),
                }
            })
        })?;
        if n == 0 {
            break;
        }
        // n <= chunk_bytes, which the configuration keeps far below i32::MAX.
        let len = n as i32;
        let ptr = exports
            .alloc
            .call(&mut *store, len)
            .map_err(RunError::Wasm)?;
        let start = ptr as u32 as usize;
        let target = exports
            .memory
            .data_mut(&mut *store)
            .get_mut(start..start + n)
            .ok_or_else(|| {
                abi_violation(format!("alloc({n}) returned {ptr}, outside guest memory"))
            })?;
        target.copy_from_slice(&chunk[..n]);
        let returned = exports
            .process
            .call(&mut *store, (ptr, len))
            .map_err(RunError::Wasm)?;
        emit(store, &exports.memory, returned, stdout)?;
        if let Some(free) = &exports.free {
            free.call(&mut *store, (ptr, len)).map_err(RunError::Wasm)?;
        }
    }
    if let Some(finish) = &exports.finish {
        let returned = finish.call(&mut *store, ()).map_err(RunError::Wasm)?;
        emit(store, &exports.memory, returned, stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Returned;

    #[test]
    fn return_values_decode_as_unsigned_ranges_or_i32_failures() {
        assert_eq!(Returned::decode(-9), Returned::Failed(9));
        assert_eq!(Returned::decode(-1), Returned::Failed(1));
        assert_eq!(
            Returned::decode(i64::from(i32::MIN)),
            Returned::Failed(i32::MAX)
        );
        let high = (0x8000_0000u64 << 32 | 5) as i64;
        assert!(high < 0, "a pointer >= 2^31 makes the i64 negative");
        assert_eq!(
            Returned::decode(high),
            Returned::Output {
                ptr: 0x8000_0000,
                len: 5
            }
        );
        assert_eq!(
            Returned::decode((0xffff_ffffu64 << 32 | 1) as i64),
            Returned::Output {
                ptr: 0xffff_ffff,
                len: 1
            }
        );
        assert_eq!(
            Returned::decode(0xffff_ffff),
            Returned::Output {
                ptr: 0,
                len: 0xffff_ffff
            }
        );
    }
}
