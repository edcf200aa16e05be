//! The price of `SandboxConfig::memory_keep_resident_bytes` (issue 13): per job on one
//! thread, `Sandbox::run_io` with input and output in memory, the memory kept resident
//! per slot at 1 MiB, 256 KiB, 128 KiB and 0 (tables at the default in every row), for
//! the C uppercase guest (192 KiB of memory) and the WAT echo whose memory (1.06 MiB)
//! is past the largest setting. Without `pagemap_scan` wasmtime 48 `memset`s
//! `min(keep, accessible)` of a slot's memory after each instance and returns the rest
//! with `madvise`, so a setting trades the `memset` of a large guest against the page
//! faults (and TLB-shootdown IPIs) of the part a guest touches beyond it.
//!
//! Rows interleaved within each run, median of [`RUNS`]; the guest's own work sampled
//! in the same runs; kept resident per slot is wasmtime's count of bytes resident in the
//! pool's free slots after the run (one slot warm).

use bytes::Bytes;

use crate::procfs;
use crate::real_guest::{
    Bare, GUEST, GuestWork, INPUT_BYTES, Io, Pool, RUNS, Row, Setting, Sluice, input, row,
    sandbox_config,
};
use crate::summary::BIG_MEMORY_ECHO;

/// The memory kept resident per slot in each row, bytes.
pub const KEEPS: [u64; 4] = [1 << 20, 256 << 10, 128 << 10, 0];

/// `bytes` for a table cell: "1 MiB", "256 KiB", "0".
fn size_text(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

/// Prints the keep-resident table: `upper` is the C uppercase guest.
pub fn keep_resident(upper: &[u8]) {
    let guests: [(String, &[u8]); 2] = [
        (
            format!(
                "C uppercase ({GUEST}, 192 KiB memory, {} KiB)",
                INPUT_BYTES >> 10
            ),
            upper,
        ),
        (
            format!("WAT echo, 1.06 MiB memory ({} KiB)", INPUT_BYTES >> 10),
            BIG_MEMORY_ECHO.as_bytes(),
        ),
    ];
    let input: Bytes = input();
    let sandboxes: Vec<Vec<Sluice>> = guests
        .iter()
        .map(|(_, wasm)| {
            KEEPS
                .iter()
                .map(|&keep| {
                    let config = sluice_worker::SandboxConfig {
                        memory_keep_resident_bytes: keep,
                        ..sandbox_config(Setting::Chosen)
                    };
                    Sluice::new(config, wasm, false)
                })
                .collect()
        })
        .collect();
    let bares: Vec<Bare> = guests
        .iter()
        .map(|(_, wasm)| Bare::new(Pool::KeepResident, wasm))
        .collect();
    let input = &input;
    let mut rows: Vec<(usize, usize, Row)> = Vec::new();
    for (g, per_guest) in sandboxes.iter().enumerate() {
        for (k, sluice) in per_guest.iter().enumerate() {
            rows.push((
                g,
                k,
                row(
                    &size_text(KEEPS[k]),
                    1,
                    Box::new(move || sluice.job(input, Io::Memory)),
                ),
            ));
        }
    }
    let mut works: Vec<GuestWork> = guests.iter().map(|_| GuestWork::new(input)).collect();
    let load_before = procfs::load_average();
    for _ in 0..RUNS {
        for (_, _, row) in &mut rows {
            row.sample();
        }
        for (work, bare) in works.iter_mut().zip(&bares) {
            work.sample(bare);
        }
    }
    let load_after = procfs::load_average();
    println!(
        "## memory kept resident per slot: its price per job (Sluice `run_io`, input and output in memory, one thread; tables {} KiB kept in every row)",
        sluice_worker::SandboxConfig::DEFAULT_TABLE_KEEP_RESIDENT_BYTES >> 10
    );
    println!(
        "(process CPU per job, median of {RUNS} interleaved runs; kernel share from clock ticks; load average {load_before} before, {load_after} after)"
    );
    println!(
        "| guest | memory kept resident | CPU µs/job | kernel share | kernel / all ticks (all runs) | beyond the guest's own work | kept resident per slot (KiB, memory + tables) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (g, k, row) in &rows {
        let (_, cpu, kernel) = row.medians();
        let (kernel_ticks, ticks) = row.ticks();
        println!(
            "| {} | {} | {cpu:.1} | {} | {kernel_ticks} / {ticks} | {:.1} | {} |",
            guests[*g].0,
            row.label,
            procfs::share_text(kernel),
            cpu - works[*g].median_us(),
            sandboxes[*g][*k].resident_bytes() >> 10
        );
    }
    for ((name, _), work) in guests.iter().zip(&works) {
        println!(
            "{name}: the guest's own work {:.2} µs/job (median of {RUNS})",
            work.median_us()
        );
    }
    println!();
}
