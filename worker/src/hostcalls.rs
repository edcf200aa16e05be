//! WASI preview 1 calls the sandbox serves itself: those that can wait, bounded by the
//! job's deadline, and those every job makes, without a Tokio hop per call.
//!
//! Epoch and fuel checks run only in wasm code: a guest waiting inside a host call is
//! not stopped by them. wasmtime-wasi's `poll_oneoff` sleeps for as long as the guest
//! asks (one relative clock subscription is a plain `thread::sleep`), so the sandbox
//! shadows it:
//!
//! - subscriptions that are all clocks (the common "sleep") are served here: the wait
//!   ends at the earliest clock or at the deadline, whichever is first; reaching the
//!   deadline stops the guest as `timeout`;
//! - a set with any fd subscription goes to wasmtime-wasi's own implementation (for
//!   its fd semantics), run under a tokio timeout that ends at the deadline.
//!
//! With directory grants, the file calls that a FIFO or device can block (`path_open`,
//! `fd_read`, `fd_pread`, `fd_write`, `fd_pwrite`) are shadowed the same way; the
//! sandbox then also turns off wasmtime-wasi's `allow_blocking_current_thread`, so
//! their blocking work runs on tokio's blocking pool where a timeout can abandon it.
//! Stdio is bounded in [`crate::streams`]; `docs/guest-abi.md` lists every call.
//!
//! wasmtime-wasi's `add_to_linker_sync` runs each of its async p1 calls under
//! `in_tokio`: it enters a runtime and `block_on`s the call's future, even when that
//! future is ready at its first poll, as the stdio and fd-metadata calls of a job are.
//! The file calls above and `fd_fdstat_get`, `fd_seek`, `fd_close` (all a wasi-libc
//! C guest's stdio uses) are shadowed by the same wasmtime-wasi function polled once
//! first ([`quick_or`]); only a call not ready then pays the runtime (and the deadline
//! bound where it has one). [`shadow_p1_calls`] defines every shadow, one per name.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p1::types;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wiggle::{GuestMemory, GuestPtr};

use crate::sandbox::{Interrupted, StoreState};

const MODULE: &str = "wasi_snapshot_preview1";

/// Most subscriptions one `poll_oneoff` may pass. The scan over them runs in a host
/// call, where no epoch check can stop it; wasi-libc never passes more than a handful.
const MAX_SUBSCRIPTIONS: u32 = 1 << 16;

/// The guest's monotonic clock: nanoseconds since its job started. Owning its origin
/// lets an absolute `poll_oneoff` clock be turned into an `Instant`.
pub(crate) struct JobClock(pub(crate) Instant);

impl HostMonotonicClock for JobClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What a shadowed call waits for when its first poll is not ready.
#[derive(Clone, Copy)]
enum Wait {
    /// Nothing can block it past the deadline (stdio is bounded by the streams; no
    /// file can be opened without a grant): finish it as wasmtime-wasi would.
    Unbounded,
    /// A FIFO or device in a granted directory could: give up at the deadline.
    Deadline(Instant),
}

/// Which of [`Wait`] each shadowed file call gets: with directory grants the calls a
/// FIFO or device can block are bounded by the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grants {
    /// No directory is granted: no file can be opened.
    None,
    /// At least one directory is granted.
    Some,
}

/// Shadows the p1 call `$name` with wasmtime-wasi's own implementation run under
/// [`quick_or`], bounded by the job's deadline if `$bounded`. Memory, fuel and errors
/// are handled as the wiggle-generated wrapper does.
macro_rules! p1_call {
    ($linker:expr, $bounded:expr, $name:ident ( $($arg:ident : $ty:ty),* )) => {{
        let bounded: bool = $bounded;
        $linker.func_wrap(
            MODULE,
            stringify!($name),
            move |mut caller: Caller<'_, StoreState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                let wait = if bounded {
                    Wait::Deadline(caller.data().deadline)
                } else {
                    Wait::Unbounded
                };
                let fuel = caller.as_context_mut().hostcall_fuel();
                let export = caller.get_export("memory");
                let (mut mem, state) = match &export {
                    Some(Extern::Memory(memory)) => {
                        let (bytes, state) = memory.data_and_store_mut(&mut caller);
                        (GuestMemory::Unshared(bytes), state)
                    }
                    Some(Extern::SharedMemory(memory)) => {
                        (GuestMemory::Shared(memory.data()), caller.data_mut())
                    }
                    _ => wasmtime::bail!(concat!(
                        stringify!($name),
                        " needs an exported memory named `memory`"
                    )),
                };
                state.wasi.set_hostcall_fuel(fuel);
                quick_or(wait, p1::$name(&mut state.wasi, &mut mem, $($arg),*))
            },
        )
    }};
}

/// Replaces wasmtime-wasi's p1 calls in `linker` (which `add_to_linker_sync` filled)
/// with the sandbox's, one definition per name:
///
/// - `poll_oneoff`: bounded by the deadline (clock-only sets are served here);
/// - `fd_read`, `fd_write`, `fd_fdstat_get`, `fd_seek`, `fd_close` (every call a
///   wasi-libc C guest's stdio makes), and `fd_pread`, `fd_pwrite`, `path_open`:
///   wasmtime-wasi's own function, polled once without entering a Tokio runtime
///   ([`quick_or`]); with `grants`, those a FIFO or device can block (`path_open`,
///   `fd_read`, `fd_pread`, `fd_write`, `fd_pwrite`) are finished under
///   [`until_deadline`].
pub(crate) fn shadow_p1_calls(
    linker: &mut Linker<StoreState>,
    grants: Grants,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let shadowed = (|| -> wasmtime::Result<()> {
        linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
        // Blockable by a FIFO or device in a granted directory.
        let file = grants == Grants::Some;
        p1_call!(linker, file, fd_read(fd: i32, iovs: i32, iovs_len: i32, nread: i32))?;
        p1_call!(linker, file, fd_write(fd: i32, iovs: i32, iovs_len: i32, nwritten: i32))?;
        p1_call!(
            linker,
            file,
            fd_pread(fd: i32, iovs: i32, iovs_len: i32, offset: i64, nread: i32)
        )?;
        p1_call!(
            linker,
            file,
            fd_pwrite(fd: i32, iovs: i32, iovs_len: i32, offset: i64, nwritten: i32)
        )?;
        p1_call!(
            linker,
            file,
            path_open(
                fd: i32,
                dirflags: i32,
                path: i32,
                path_len: i32,
                oflags: i32,
                rights_base: i64,
                rights_inheriting: i64,
                fdflags: i32,
                opened: i32
            )
        )?;
        // Metadata and bookkeeping: nothing for them to wait on.
        p1_call!(linker, false, fd_fdstat_get(fd: i32, stat: i32))?;
        p1_call!(
            linker,
            false,
            fd_seek(fd: i32, offset: i64, whence: i32, newoffset: i32)
        )?;
        p1_call!(linker, false, fd_close(fd: i32))?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    shadowed
}

/// Runs one of wasmtime-wasi's own p1 calls: polled once with a no-op waker (inside
/// a runtime context, so code that needs a Tokio handle finds one); if that finishes
/// it, that is the result. Otherwise the same future is finished as `wait` says: under
/// `in_tokio`, exactly as wasmtime-wasi's `add_to_linker_sync` runs it, or under
/// [`until_deadline`].
///
/// The calls a job makes (stdio reads and writes into the job's buffers, fd metadata)
/// are ready at their first poll; wasmtime-wasi's wrapper would enter its runtime and
/// `block_on` each, at 135–185 ns a call (docs/benchmarks.md, Sandbox section).
fn quick_or(
    wait: Wait,
    call: impl Future<Output = wasmtime::Result<i32>>,
) -> wasmtime::Result<i32> {
    let mut call = std::pin::pin!(call);
    let first = wasmtime_wasi::runtime::with_ambient_tokio_runtime(|| {
        wasmtime_wasi::runtime::poll_noop(call.as_mut())
    });
    if let Some(done) = first {
        return done;
    }
    match wait {
        Wait::Unbounded => wasmtime_wasi::runtime::in_tokio(call),
        Wait::Deadline(deadline) => until_deadline(deadline, call),
    }
}

/// Runs one of wasmtime-wasi's own p1 calls, giving up at `deadline` (the guest is
/// then stopped as `timeout`). Only work it awaits can be abandoned: blocking work must
/// run on tokio's blocking pool, not inline.
fn until_deadline(
    deadline: Instant,
    call: impl Future<Output = wasmtime::Result<i32>>,
) -> wasmtime::Result<i32> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    // The timer is made inside `in_tokio`, whose runtime (the caller's, or
    // wasmtime-wasi's own) provides it: outside any runtime, making one panics.
    match wasmtime_wasi::runtime::in_tokio(
        async move { tokio::time::timeout(remaining, call).await },
    ) {
        Ok(result) => result,
        Err(_elapsed) => Err(Interrupted::Timeout.into()),
    }
}

fn errno(e: types::Errno) -> i32 {
    i32::from(e as u16)
}

/// When one clock subscription fires, or `None` if it never does before any deadline.
#[derive(Clone, Copy)]
struct Now {
    instant: Instant,
    wall_ns: u64,
    job_start: Instant,
}

impl Now {
    fn take(job_start: Instant) -> Self {
        Now {
            instant: Instant::now(),
            wall_ns: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            job_start,
        }
    }

    /// The instant `clock` fires, `Ok(None)` if it lies past what an `Instant` holds,
    /// or the errno for a clock wasmtime-wasi does not support either.
    fn wake(&self, clock: &types::SubscriptionClock) -> Result<Option<Instant>, types::Errno> {
        let absolute = clock
            .flags
            .contains(types::Subclockflags::SUBSCRIPTION_CLOCK_ABSTIME);
        Ok(match (clock.id, absolute) {
            (types::Clockid::Monotonic, true) => self
                .job_start
                .checked_add(Duration::from_nanos(clock.timeout)),
            (types::Clockid::Realtime, true) => self.instant.checked_add(Duration::from_nanos(
                clock.timeout.saturating_sub(self.wall_ns),
            )),
            (types::Clockid::Monotonic | types::Clockid::Realtime, false) => self
                .instant
                .checked_add(Duration::from_nanos(clock.timeout)),
            _ => return Err(types::Errno::Inval),
        })
    }
}

/// What a subscription set asks for.
enum Plan {
    /// Only clocks: the earliest fires at this instant (`None`: never, in practice).
    Clocks(Option<Instant>),
    /// At least one fd: wasmtime-wasi's implementation decides.
    Delegate,
}

fn plan(
    memory: &GuestMemory<'_>,
    subs: GuestPtr<[types::Subscription]>,
    now: &Now,
) -> Result<Plan, types::Errno> {
    let mut earliest: Option<Instant> = None;
    for sub in subs.iter() {
        let sub = sub
            .and_then(|sub| memory.read(sub))
            .map_err(|_| types::Errno::Fault)?;
        match sub.u {
            types::SubscriptionU::Clock(clock) => {
                if let Some(wake) = now.wake(&clock)? {
                    earliest = Some(earliest.map_or(wake, |e| e.min(wake)));
                }
            }
            types::SubscriptionU::FdRead(_) | types::SubscriptionU::FdWrite(_) => {
                return Ok(Plan::Delegate);
            }
        }
    }
    Ok(Plan::Clocks(earliest))
}

/// Writes one clock event per subscription that has fired by `fired_by`; their count.
fn write_clock_events(
    memory: &mut GuestMemory<'_>,
    subs: GuestPtr<[types::Subscription]>,
    events: GuestPtr<types::Event>,
    now: &Now,
    fired_by: Instant,
) -> Result<u32, types::Errno> {
    let mut count: u32 = 0;
    for sub in subs.iter() {
        let sub = sub
            .and_then(|sub| memory.read(sub))
            .map_err(|_| types::Errno::Fault)?;
        let types::SubscriptionU::Clock(clock) = sub.u else {
            continue;
        };
        if now.wake(&clock)?.is_some_and(|wake| wake <= fired_by) {
            let event = types::Event {
                userdata: sub.userdata,
                error: types::Errno::Success,
                type_: types::Eventtype::Clock,
                fd_readwrite: types::EventFdReadwrite {
                    flags: types::Eventrwflags::empty(),
                    nbytes: 0,
                },
            };
            events
                .add(count)
                .and_then(|at| memory.write(at, event))
                .map_err(|_| types::Errno::Fault)?;
            count += 1;
        }
    }
    Ok(count)
}

/// `poll_oneoff(in, out, nsubscriptions, *nevents) -> errno`, bounded by the deadline.
fn poll_oneoff(
    mut caller: Caller<'_, StoreState>,
    subs: i32,
    events: i32,
    nsubscriptions: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let deadline = caller.data().deadline;
    let job_start = caller.data().job_start;
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("poll_oneoff needs an exported memory named `memory`");
    };
    let (bytes, state) = memory.data_and_store_mut(&mut caller);
    let mut mem = GuestMemory::Unshared(bytes);

    let n = nsubscriptions as u32;
    if n == 0 {
        // wasmtime-wasi does not sleep forever either.
        return Ok(errno(types::Errno::Inval));
    }
    if n > MAX_SUBSCRIPTIONS {
        return Ok(errno(types::Errno::Nomem));
    }
    let sub_array = GuestPtr::<types::Subscription>::new(subs as u32).as_array(n);
    let now = Now::take(job_start);
    let earliest = match plan(&mem, sub_array, &now) {
        Ok(Plan::Clocks(earliest)) => earliest,
        Ok(Plan::Delegate) => {
            let ctx = &mut state.wasi;
            ctx.set_hostcall_fuel(fuel);
            return until_deadline(
                deadline,
                p1::poll_oneoff(ctx, &mut mem, subs, events, nsubscriptions, nevents),
            );
        }
        Err(e) => return Ok(errno(e)),
    };

    match earliest {
        Some(wake) if wake < deadline => {
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        _ => {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return Err(Interrupted::Timeout.into());
        }
    }
    let event_ptr = GuestPtr::<types::Event>::new(events as u32);
    let fired_by = Instant::now();
    let count = match write_clock_events(&mut mem, sub_array, event_ptr, &now, fired_by) {
        Ok(count) => count,
        Err(e) => return Ok(errno(e)),
    };
    if mem
        .write(GuestPtr::<u32>::new(nevents as u32), count)
        .is_err()
    {
        return Ok(errno(types::Errno::Fault));
    }
    Ok(errno(types::Errno::Success))
}

#[cfg(test)]
mod tests;
