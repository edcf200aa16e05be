//! WASI preview 1 calls that can wait, bounded by the job's deadline.
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

/// Replaces wasmtime-wasi's `poll_oneoff` in `linker` with the deadline-bounded one.
pub(crate) fn shadow_waiting_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let shadowed = linker
        .func_wrap(MODULE, "poll_oneoff", poll_oneoff)
        .map(|_| ());
    linker.allow_shadowing(false);
    shadowed
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

/// Shadows the p1 call `$name` with wasmtime-wasi's own implementation run under
/// [`until_deadline`].
macro_rules! bounded_call {
    ($linker:expr, $name:ident ( $($arg:ident : $ty:ty),* )) => {
        $linker.func_wrap(
            MODULE,
            stringify!($name),
            |mut caller: Caller<'_, StoreState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                let deadline = caller.data().deadline;
                let fuel = caller.as_context_mut().hostcall_fuel();
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    wasmtime::bail!(concat!(
                        stringify!($name),
                        " needs an exported memory named `memory`"
                    ));
                };
                let (bytes, state) = memory.data_and_store_mut(&mut caller);
                let mut mem = GuestMemory::Unshared(bytes);
                state.wasi.set_hostcall_fuel(fuel);
                until_deadline(deadline, p1::$name(&mut state.wasi, &mut mem, $($arg),*))
            },
        )
    };
}

/// Replaces the file calls a FIFO or device in a granted directory could block with
/// deadline-bounded ones. Only for sandboxes with grants: without a preopen no file can
/// be opened, and stdio is bounded by the streams.
pub(crate) fn shadow_file_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let shadowed = (|| -> wasmtime::Result<()> {
        bounded_call!(
            linker,
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
        bounded_call!(linker, fd_read(fd: i32, iovs: i32, iovs_len: i32, nread: i32))?;
        bounded_call!(
            linker,
            fd_pread(fd: i32, iovs: i32, iovs_len: i32, offset: i64, nread: i32)
        )?;
        bounded_call!(linker, fd_write(fd: i32, iovs: i32, iovs_len: i32, nwritten: i32))?;
        bounded_call!(
            linker,
            fd_pwrite(fd: i32, iovs: i32, iovs_len: i32, offset: i64, nwritten: i32)
        )?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    shadowed
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
