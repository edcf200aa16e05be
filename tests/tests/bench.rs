//! `sluice bench` and `scripts/bench-fleet` against a real redis-server and real worker
//! processes: a real C guest goes through the fleet bench with every figure reported and
//! every output checked; a guest whose output differs from its reference run fails the
//! bench (a wrong output is a failed job, not throughput); the fleet script prints one
//! table of its configurations and stops its scratch redis-server; `scripts/bench-peer`
//! exits 1 when a Sluice job fails and prints its jobs/s ratio from the drain run (like
//! the peer's) and the throughput run; every drained job is checked; SIGTERM to `sluice
//! bench` stops its workers. No figure's value is asserted (timing varies); only that
//! each is there and that the jobs' results are what they are.

use std::io::Write;
use std::process::{Output, Stdio};

use sluice_tests::{RedisServer, bin, guest, repo_root};

/// The figures `--format table` prints, by the start of their label.
const TABLE_FIGURES: [&str; 21] = [
    "| module, input |",
    "| worker processes × slots |",
    "| jobs (throughput run) |",
    "| failed jobs (wrong output counts as failed) |",
    "| results expired before checked (success, output unchecked) |",
    "| jobs retried (ran more than once; their CPU is counted) |",
    "| worker context switches per job (voluntary + nonvoluntary, live threads) |",
    "| enqueue time |",
    "| end to end |",
    "| enqueue→result latency under that backlog, p50 / p99 |",
    "| worker CPU per job (all worker processes, /proc utime+stime), of which kernel |",
    "| Redis CPU per job (INFO cpu) |",
    "| bench (submitter) CPU per job |",
    "| Redis commands per job",
    "| latency at 200 jobs/s offered (",
    "| of which, p50 / p99 / p99.9: sender late",
    "| drain: jobs enqueued before the workers start, checked (outcome and output) |",
    "| drain: first worker ready → last notice (as the peer measures) |",
    "| drain: first worker ready → last worker ready (spread); → first drained job's notice |",
    "| drain: worker CPU per job (from each worker's ready line), of which kernel |",
    "| drain: Redis CPU per job (INFO cpu, from before the workers start) |",
];

/// The columns `--format row` and `scripts/bench-fleet` print.
const ROW_COLUMNS: [&str; 28] = [
    "module",
    "input",
    "workers × slots",
    "jobs",
    "failed",
    "expired",
    "retried",
    "jobs/s",
    "latency jobs",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "worker CPU/job µs",
    "worker kernel %",
    "worker ctx switches/job",
    "Redis CPU/job µs",
    "bench CPU/job µs",
    "commands/job",
    "sender late p99 ms",
    "XADD p99 ms",
    "XADD reply → notice p99 ms",
    "drain jobs/s",
    "drain s",
    "drain worker CPU/job µs",
    "drain Redis CPU/job µs",
    "drain jobs checked",
    "drain ready spread ms",
    "drain first notice ms",
];

fn bench(redis: &RedisServer, args: &[&str]) -> Output {
    bin("sluice")
        .arg("bench")
        .args(["--redis", &redis.url()])
        .args(["--no-memory-check", "--no-redis-benchmark"])
        .args(args)
        .output()
        .expect("run sluice bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

/// The value cell of the table row whose label starts with `label`.
fn value<'a>(table: &'a str, label: &str) -> &'a str {
    let line = table
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} row in:\n{table}"));
    line.trim_end_matches('|')
        .rsplit('|')
        .next()
        .expect("a value cell")
        .trim()
}

/// The cells of a Markdown row.
fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

#[test]
fn bench_runs_the_c_uppercase_guest_with_every_figure_and_every_output_checked() {
    let redis = RedisServer::start();
    let upper = guest("uppercase.wasm");
    // The reference run the bench checks against (`sluice-worker run`) is right on its
    // own: the guest's output is the ASCII uppercase of its input.
    let input = b"The quick brown fox jumps over the lazy dog. 0123456789\n".repeat(80);
    let mut reference = bin("sluice-worker")
        .arg("run")
        .arg(&upper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sluice-worker run");
    reference
        .stdin
        .take()
        .unwrap()
        .write_all(&input)
        .expect("feed the guest");
    let reference = reference.wait_with_output().unwrap();
    assert!(reference.status.success());
    assert_eq!(reference.stdout, input.to_ascii_uppercase());

    let out = bench(
        &redis,
        &[
            "--module",
            upper.to_str().unwrap(),
            "--input-size",
            "4KiB",
            "--jobs",
            "200",
            "--workers",
            "2",
            "--latency-jobs",
            "50",
        ],
    );
    let table = text(&out.stdout);
    assert!(
        out.status.success(),
        "sluice bench failed: {}\n{table}",
        text(&out.stderr)
    );
    for figure in TABLE_FIGURES {
        assert!(
            table.lines().any(|l| l.starts_with(figure)),
            "no {figure} row in:\n{table}"
        );
    }
    assert_eq!(value(&table, "| module, input |"), "uppercase.wasm, 4 KiB");
    assert_eq!(value(&table, "| worker processes × slots |"), "2 × 64");
    assert_eq!(value(&table, "| jobs (throughput run) |"), "200");
    assert_eq!(
        value(&table, "| failed jobs (wrong output counts as failed) |"),
        "0 (throughput: none; latency: none; drain: none)"
    );
    // The drain run: every one of its 200 jobs checked (outcome and output), and its
    // figures there and positive.
    let drain_checked = value(
        &table,
        "| drain: jobs enqueued before the workers start, checked (outcome and output) |",
    );
    assert!(
        drain_checked.starts_with("200 of 200 (none); enqueued in "),
        "{table}"
    );
    let drain = value(
        &table,
        "| drain: first worker ready → last notice (as the peer measures) |",
    );
    let (seconds, jobs_per_s) = drain.split_once(" s → **").expect("s → jobs/s");
    assert!(seconds.parse::<f64>().expect("seconds") > 0.0, "{drain}");
    let jobs_per_s: f64 = jobs_per_s
        .strip_suffix(" jobs/s**")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("drain jobs/s is a number: {drain}"));
    assert!(jobs_per_s > 0.0, "{drain}");
    let worker_cpu = value(
        &table,
        "| drain: worker CPU per job (from each worker's ready line), of which kernel |",
    );
    let worker_us: f64 = worker_cpu
        .split_once(" µs, ")
        .and_then(|(us, _)| us.parse().ok())
        .unwrap_or_else(|| panic!("drain worker CPU is a number: {worker_cpu}"));
    assert!(worker_us > 0.0, "{table}");
    let redis_cpu = value(
        &table,
        "| drain: Redis CPU per job (INFO cpu, from before the workers start) |",
    );
    let redis_us: f64 = redis_cpu
        .strip_suffix(" µs")
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("drain Redis CPU is a number: {redis_cpu}"));
    assert!(redis_us > 0.0, "{table}");
    assert!(
        value(&table, "| latency at 200 jobs/s offered (").ends_with(" ms"),
        "{table}"
    );
    let latency_row = table
        .lines()
        .find(|l| l.starts_with("| latency at 200 jobs/s offered ("))
        .unwrap();
    assert!(
        latency_row.contains("(50 jobs), p50 / p99 / p99.9 |"),
        "every latency job timed: {latency_row}"
    );
    // The latency's stages: three groups of p50 / p99 / p99.9, each in ms.
    let stages = value(&table, "| of which, p50 / p99 / p99.9: sender late");
    let groups: Vec<&str> = stages.split("; ").collect();
    assert_eq!(groups.len(), 3, "{stages}");
    for group in groups {
        assert!(group.ends_with(" ms"), "{stages}");
        assert_eq!(group.matches(" / ").count(), 2, "{stages}");
    }
    // Redis's breakdown from the real server: the workers' complete.lua calls show as
    // an `evalsha` row, and the run issued commands.
    let commands: f64 = value(&table, "| Redis commands per job")
        .parse()
        .unwrap_or_else(|_| panic!("commands per job is a number:\n{table}"));
    assert!(commands > 0.0, "{table}");
    let evalsha = cells(
        table
            .lines()
            .find(|l| l.starts_with("| evalsha |"))
            .unwrap_or_else(|| panic!("no | evalsha | row in:\n{table}")),
    );
    let per_job: f64 = evalsha[1].parse().expect("calls/job is a number");
    assert!(per_job > 0.0, "{table}");
}

#[test]
fn worker_log_lets_the_workers_say_where_each_jobs_time_went() {
    let redis = RedisServer::start();
    let out = bench(
        &redis,
        &[
            "--jobs",
            "20",
            "--latency-jobs",
            "20",
            "--worker-log",
            "sluice_worker::executor=debug",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "sluice bench failed: {stderr}");
    // Warm-up, throughput (20) and latency (20) runs: a `job recorded` line per job.
    let recorded: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("job recorded"))
        .collect();
    assert!(recorded.len() >= 40, "{} lines:\n{stderr}", recorded.len());
    // The workers' log passes through the bench, with the `worker ready` line the drain
    // run waits for let through a filter that does not name it: the first start and
    // the drain's.
    let ready = stderr
        .lines()
        .filter(|l| l.contains("sluice_worker::fleet::serve: worker ready"))
        .count();
    assert_eq!(ready, 2, "{stderr}");
    for line in recorded {
        for field in ["prepare_us=", "run_us=", "recorded_us="] {
            assert!(line.contains(field), "no {field} in {line}");
        }
    }
    // At a quiet filter the workers say nothing of a successful job, the drain's
    // workers included; a filter that turns the ready line's module off still lets the
    // drain see that line (the bench's directive replaces that one).
    let quiet = bench(
        &redis,
        &[
            "--jobs",
            "20",
            "--latency-jobs",
            "20",
            "--worker-log",
            "warn,sluice_worker::fleet::serve=off",
        ],
    );
    let stderr = text(&quiet.stderr);
    assert!(quiet.status.success(), "sluice bench failed: {stderr}");
    assert!(!stderr.contains("job recorded"), "{stderr}");
    let ready = stderr
        .lines()
        .filter(|l| l.contains("sluice_worker::fleet::serve: worker ready"))
        .count();
    assert_eq!(ready, 2, "{stderr}");
    let table = text(&quiet.stdout);
    assert!(
        value(
            &table,
            "| drain: jobs enqueued before the workers start, checked (outcome and output) |"
        )
        .starts_with("20 of 20 (none); "),
        "{table}"
    );
    // --no-drain: no drain run, and the table says so.
    let no_drain = bench(
        &redis,
        &["--jobs", "20", "--latency-jobs", "20", "--no-drain"],
    );
    assert!(no_drain.status.success());
    assert!(!text(&no_drain.stderr).contains("job recorded"));
    let table = text(&no_drain.stdout);
    assert_eq!(
        value(&table, "| drain |"),
        "not run (--no-drain)",
        "{table}"
    );
}

#[test]
fn a_guest_whose_output_differs_from_its_reference_run_fails_the_bench() {
    // Sixteen random bytes on stdout: never the reference run's output.
    let random_out = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $random (i32.const 16) (i32.const 16)))
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 16))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("random_out.wat");
    std::fs::write(&module, random_out).unwrap();
    let redis = RedisServer::start();
    let out = bench(
        &redis,
        &[
            "--module",
            module.to_str().unwrap(),
            "--jobs",
            "20",
            "--latency-jobs",
            "5",
            "--format",
            "row",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let row = cells(stdout.lines().nth(2).expect("a row"));
    assert_eq!(row[0], "random_out.wat");
    // 20 throughput, 5 latency and 20 drain jobs.
    assert_eq!(row[4], "45", "every job a wrong output: {stdout}");
    assert_eq!(row[7], "0", "no throughput from wrong outputs: {stdout}");
    assert_eq!(row[21], "0", "no drain jobs/s from wrong outputs: {stdout}");
    assert_eq!(row[25], "20", "every drained job checked: {stdout}");
}

#[test]
fn bench_fleet_prints_one_table_beside_redis_benchmark() {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/bench-fleet"))
        .args([
            "--noop-jobs",
            "100",
            "--upper-jobs",
            "50",
            "--latency-jobs",
            "10",
        ])
        .args(["--workers", "1 2", "--redis-benchmark-requests", "10000"])
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .expect("run scripts/bench-fleet");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench-fleet failed: {}\n{stdout}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("SET: "),
        "redis-benchmark's SET figure: {stdout}"
    );
    assert!(
        stdout.contains("GET: "),
        "redis-benchmark's GET figure: {stdout}"
    );
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(cells)
        .collect();
    let mut header = ROW_COLUMNS.map(str::to_owned).to_vec();
    header.push("Redis load vs redis-benchmark SET %".into());
    assert_eq!(rows[0], header, "{stdout}");
    let configurations: Vec<(String, String, String)> = rows[2..]
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    assert_eq!(
        configurations,
        [
            ("no-op", "empty", "1 × 64"),
            ("no-op", "empty", "2 × 64"),
            ("uppercase.wasm", "4 KiB", "1 × 64"),
            ("uppercase.wasm", "4 KiB", "2 × 64"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
        "{stdout}"
    );
    for row in &rows[2..] {
        assert_eq!(row.len(), header.len(), "{stdout}");
        assert_eq!(row[4], "0", "no failed job: {stdout}");
        // The drain column: positive jobs/s over every one of the run's jobs, checked.
        let drain: f64 = row[21].parse().expect("drain jobs/s is a number");
        assert!(drain > 0.0, "{stdout}");
        assert_eq!(row[25], row[3], "every drained job checked: {stdout}");
        // The ready lines' spread and the first notice: milliseconds, each a number.
        for column in [26, 27] {
            let ms: f64 = row[column].parse().expect("a drain ms column is a number");
            assert!(ms >= 0.0, "{stdout}");
        }
    }
    assert_scratch_redis_stopped(&stdout);
}

/// The scratch redis-server a bench script reported (`scratch redis-server: port P,
/// pid N`) is gone and its port closed.
fn assert_scratch_redis_stopped(stdout: &str) {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("scratch redis-server: port "))
        .unwrap_or_else(|| panic!("the script names its server: {stdout}"));
    let (port, pid) = line.split_once(", pid ").expect("port, pid");
    let port: u16 = port.parse().expect("a port");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} still runs"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
}

/// The bench binaries' directory (`--bin-dir`).
fn bin_dir() -> std::path::PathBuf {
    std::path::Path::new(bin("sluice").get_program())
        .parent()
        .expect("binary directory")
        .to_owned()
}

#[test]
fn bench_peer_exits_1_when_a_sluice_job_fails() {
    // A stub peer: run.sh prints the harness's JSON line; its upper.c writes random
    // bytes, so Sluice's jobs differ from their reference run and fail.
    let peer = tempfile::tempdir().unwrap();
    std::fs::write(
        peer.path().join("run.sh"),
        "echo '{\"jobs_per_s\":100,\"p50_ms\":1,\"p99_ms\":2,\"max_ms\":3,\
         \"redis_cmds_per_job\":9,\"bad_results\":0,\"completed\":10}'\n",
    )
    .unwrap();
    std::fs::write(
        peer.path().join("upper.c"),
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { unsigned char b[16]; getentropy(b, sizeof b);\n\
         for (int i = 0; i < 16; i++) printf(\"%02x\", b[i]); return 0; }\n",
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/bench-peer"))
        .arg(peer.path())
        .args(["--noop-jobs", "20", "--upper-jobs", "10", "--procs", "1"])
        .arg("--bin-dir")
        .arg(bin_dir())
        .env("TMPDIR", peer.path())
        .output()
        .expect("run scripts/bench-peer");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let failures = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} wrong or failed results |")))
            .map(cells)
            .unwrap_or_else(|| panic!("no {name} results row: {stdout}"))[2]
            .clone()
    };
    assert!(
        failures("no-op (5-byte input)").starts_with("0 failed"),
        "{stdout}"
    );
    // The jobs/s ratio like the peer's (the drain), then the throughput run's.
    for label in [
        "| no-op (5-byte input) jobs/s (20 jobs), like the peer: enqueued before the workers start |",
        "| no-op (5-byte input) jobs/s (20 jobs), enqueued while the workers run (peer: its drain) |",
    ] {
        let row = cells(
            stdout
                .lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label} row: {stdout}")),
        );
        assert_eq!(row[1], "100", "the peer's jobs/s: {stdout}");
        let ours: f64 = row[2].parse().expect("our jobs/s is a number");
        assert!(ours > 0.0, "{stdout}");
        assert!(row[3].ends_with('×'), "a ratio: {stdout}");
    }
    assert!(
        !failures("4 KiB uppercase").starts_with("0 failed"),
        "{stdout}"
    );
    assert_scratch_redis_stopped(&stdout);
}

/// Processes whose parent is `parent` and whose command line holds `arg`.
fn children(parent: u32, arg: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn sigterm_to_the_bench_stops_its_workers() {
    let redis = RedisServer::start();
    let mut bench = bin("sluice")
        .arg("bench")
        .args(["--redis", &redis.url()])
        .args(["--no-memory-check", "--no-redis-benchmark"])
        .args(["--workers", "2", "--jobs", "1000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice bench");
    // Its two `sluice-worker serve` children (no event to wait on: /proc is polled).
    let mut workers = Vec::new();
    for _ in 0..600 {
        workers = children(bench.id(), "serve");
        if workers.len() == 2 {
            break;
        }
        assert!(bench.try_wait().unwrap().is_none(), "the bench ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(workers.len(), 2, "the bench started its workers");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &bench.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = bench.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the bench"
        );
    }
}

/// Whether process `pid` has a thread named `name` (`/proc/<pid>/task/*/comm`).
fn has_thread(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
        })
        .unwrap_or(false)
}

#[test]
fn sigterm_during_the_latency_run_stops_the_bench_and_its_workers() {
    let redis = RedisServer::start();
    let mut bench = bin("sluice")
        .arg("bench")
        .args(["--redis", &redis.url()])
        .args(["--no-memory-check", "--no-redis-benchmark"])
        .args(["--workers", "2", "--jobs", "1"])
        .args(["--latency-jobs", "1000000", "--rate", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice bench");
    // The latency run has started once its pacing thread exists (no event to wait on:
    // /proc is polled).
    let mut pacing = false;
    for _ in 0..1200 {
        pacing = has_thread(bench.id(), "bench-pacer");
        if pacing {
            break;
        }
        assert!(bench.try_wait().unwrap().is_none(), "the bench ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(pacing, "the latency run started");
    let workers = children(bench.id(), "serve");
    assert_eq!(workers.len(), 2, "the bench's workers run");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &bench.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // A bench that ignored the signal would go on for 5,000 s: bounded, it fails.
    let mut stopped = false;
    for _ in 0..600 {
        if bench.try_wait().unwrap().is_some() {
            stopped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !stopped {
        let _ = bench.kill();
    }
    let out = bench.wait_with_output().unwrap();
    assert!(stopped, "SIGTERM did not stop the latency run within 30 s");
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the bench"
        );
    }
}
