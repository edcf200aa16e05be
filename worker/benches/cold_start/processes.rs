//! Cold start of real `sluice-worker serve` processes against a real redis-server.
//!
//! Each trial has its own queue (so its own L3 namespace). Two jobs of the module are
//! queued before each worker starts, so its first claim brings the first job: worker A
//! (empty cache directory, nothing in Redis) compiles; worker B (another empty
//! directory) loads A's artifact from Redis and writes it to its directory; worker C
//! (B's directory) loads it from disk; worker D (no cache directory) loads it from
//! Redis only. Each worker's second job is an L1 hit; after B's two, more jobs give
//! the per-job figures. The times are the worker's own (`job recorded` debug line of
//! the executor: claim → `Sandbox::run`, the run, claim → result stored; the module's
//! code is loaded inside the run, when a job first needs its engine), the tier each
//! first job came from is checked on the worker's /metrics, and each job's output is
//! checked.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobId, JobOutput, ModuleHash, Outcome, Queue};
use tokio::runtime::Runtime;

use crate::in_process::job;
use crate::stats::{Samples, ms, ratio, us};

/// How long any one wait may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(300);

/// One `job recorded` line of a worker.
#[derive(Clone, Copy, Debug)]
struct Recorded {
    /// When the bench read the line.
    seen: Instant,
    /// Claim → guest start (policy, module load, input).
    prepare_us: u64,
    /// The guest's run (instantiate + run).
    run_us: u64,
    /// Claim → result stored.
    recorded_us: u64,
}

/// Removes ANSI escape sequences (the log may be coloured).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of field `name` on a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A running worker: its recorded jobs arrive on `recorded`.
struct Worker {
    child: Child,
    spawned: Instant,
    recorded: Receiver<Recorded>,
    metrics: String,
    /// Running under `perf record`.
    profiled: bool,
}

/// How a worker is started.
struct Opts<'a> {
    /// Its `--cache-dir` (none: no L2).
    dir: Option<&'a Path>,
    /// The fleet's key.
    key_file: &'a Path,
    /// Where `perf record` writes, to run it under perf.
    perf: Option<PathBuf>,
}

impl Worker {
    fn start(url: &str, queue: &str, name: &str, opts: &Opts<'_>) -> Self {
        let metrics = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .to_string();
        let spawned = Instant::now();
        let worker = sluice_tests::bin("sluice-worker");
        let mut command = match &opts.perf {
            // Under `perf record`: stopped with SIGINT so perf writes its data.
            Some(out) => {
                let mut perf = Command::new("perf");
                perf.args(["record", "--call-graph", "dwarf,16384", "-F", "4000", "-o"])
                    .arg(out)
                    .arg("--")
                    .arg(worker.get_program())
                    .env_remove("SLUICE_REDIS_URL");
                perf
            }
            None => worker,
        };
        let mut child = command
            .args([
                "serve",
                "--redis",
                url,
                "--queue",
                queue,
                "--consumer",
                name,
            ])
            .arg("--concurrency=1")
            .arg(format!("--metrics-addr={metrics}"))
            .args(opts.dir.map(|dir| format!("--cache-dir={}", dir.display())))
            .arg(format!("--cache-key-file={}", opts.key_file.display()))
            .env("RUST_LOG", "warn,sluice_worker::executor=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice-worker serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, recorded) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = plain(&line);
                if !line.contains("job recorded") {
                    eprintln!("[worker] {line}");
                    continue;
                }
                let parsed = (|| {
                    Some(Recorded {
                        seen: Instant::now(),
                        prepare_us: field(&line, "prepare_us")?,
                        run_us: field(&line, "run_us")?,
                        recorded_us: field(&line, "recorded_us")?,
                    })
                })();
                match parsed {
                    Some(r) => {
                        if tx.send(r).is_err() {
                            return;
                        }
                    }
                    None => eprintln!("[worker] unparsed: {line}"),
                }
            }
        });
        Worker {
            child,
            spawned,
            recorded,
            metrics,
            profiled: opts.perf.is_some(),
        }
    }

    fn next(&self) -> Recorded {
        self.recorded
            .recv_timeout(PATIENCE)
            .expect("the worker recorded a job")
    }

    /// The value of a `sluice_module_cache_*{tier}` counter on /metrics.
    fn tier(&self, metric: &str, tier: &str) -> f64 {
        let series = format!("sluice_module_cache_{metric}{{tier=\"{tier}\"}} ");
        let mut reply = sluice_tests::serve::agent()
            .get(&format!("http://{}/metrics", self.metrics))
            .call()
            .expect("read the worker's /metrics");
        let text = reply.body_mut().read_to_string().expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the worker's metrics"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.profiled {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What one tier's first jobs measured over the trials.
#[derive(Default)]
struct Tier {
    prepare: Samples,
    run: Samples,
    recorded: Samples,
    /// Process spawned → the first job's line read.
    spawn_to_result: Samples,
    /// The second job (an L1 hit), claim → result stored.
    l1_recorded: Samples,
    l1_prepare: Samples,
    l1_run: Samples,
}

/// The fleet part: a redis-server, and per trial a queue and three workers.
pub struct Processes {
    rt: Runtime,
    url: String,
    wasm: Vec<u8>,
    expected: Vec<u8>,
    compile: Tier,
    l3: Tier,
    l2: Tier,
    l3_only: Tier,
    run: Samples,
    claim_to_result: Samples,
}

impl Processes {
    /// For `wasm`, whose output for the bench's input is `expected`.
    pub fn new(rt: Runtime, url: String, wasm: &[u8], expected: &[u8]) -> Self {
        Processes {
            rt,
            url,
            wasm: wasm.to_vec(),
            expected: expected.to_vec(),
            compile: Tier::default(),
            l3: Tier::default(),
            l2: Tier::default(),
            l3_only: Tier::default(),
            run: Samples::default(),
            claim_to_result: Samples::default(),
        }
    }

    /// Enqueues `n` jobs of `module`; returns their ids.
    fn enqueue(&self, queue: &RedisQueue, module: ModuleHash, n: usize) -> Vec<JobId> {
        let jobs: Vec<Job> = (0..n).map(|_| job(module)).collect();
        self.rt.block_on(queue.enqueue(&jobs)).expect("enqueue");
        jobs.iter().map(|j| j.id).collect()
    }

    /// Checks each job in `ids` succeeded with the expected output.
    fn check(&self, queue: &RedisQueue, ids: &[JobId]) {
        for result in self.rt.block_on(sluice_tests::wait::results(queue, ids)) {
            assert_eq!(result.outcome, Outcome::Success, "{result:?}");
            assert_eq!(result.output, JobOutput::Inline(self.expected.clone()));
        }
    }

    /// Starts a worker over two queued jobs, records them in `into`, and returns it.
    fn first_two(
        &self,
        (queue, name): (&RedisQueue, &str),
        module: ModuleHash,
        opts: &Opts<'_>,
        into: &mut Tier,
    ) -> Worker {
        let ids = self.enqueue(queue, module, 2);
        // A consumer name of its own: a killed worker's name is never taken over.
        let consumer = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let worker = Worker::start(&self.url, name, &consumer, opts);
        let first = worker.next();
        let second = worker.next();
        into.prepare.push_us(first.prepare_us);
        into.run.push_us(first.run_us);
        into.recorded.push_us(first.recorded_us);
        into.spawn_to_result.push(first.seen - worker.spawned);
        into.l1_prepare.push_us(second.prepare_us);
        into.l1_run.push_us(second.run_us);
        into.l1_recorded.push_us(second.recorded_us);
        self.check(queue, &ids);
        assert_eq!(
            worker.tier("hits_total", "l1"),
            1.0,
            "the second job is an L1 hit"
        );
        worker
    }

    /// One trial on a queue of its own.
    pub fn trial(&mut self, n: usize, scratch: &Path, per_job: usize) {
        let name = format!("cold{n}");
        let queue = self.rt.block_on(sluice_tests::connect(&self.url, &name));
        let module = self
            .rt
            .block_on(queue.modules().put(&self.wasm, None))
            .expect("store the module");
        let key_file = scratch.join("cache.key");
        std::fs::write(&key_file, "the cold-start benchmark's fleet key\n").expect("key file");
        let (dir_a, dir_b) = (scratch.join(format!("{n}a")), scratch.join(format!("{n}b")));

        let mut tier = std::mem::take(&mut self.compile);
        let a = self.first_two(
            (&queue, &name),
            module,
            &Opts {
                dir: Some(&dir_a),
                key_file: &key_file,
                perf: None,
            },
            &mut tier,
        );
        self.compile = tier;
        assert_eq!(a.tier("misses_total", "l3"), 1.0, "A compiled");
        drop(a);

        let mut tier = std::mem::take(&mut self.l3);
        let b = self.first_two(
            (&queue, &name),
            module,
            &Opts {
                dir: Some(&dir_b),
                key_file: &key_file,
                perf: None,
            },
            &mut tier,
        );
        self.l3 = tier;
        assert_eq!(b.tier("hits_total", "l3"), 1.0, "B loaded from Redis");
        assert_eq!(b.tier("misses_total", "l3"), 0.0, "B did not compile");
        let ids = self.enqueue(&queue, module, per_job);
        for _ in 0..per_job {
            let r = b.next();
            self.run.push_us(r.run_us);
            self.claim_to_result.push_us(r.recorded_us);
        }
        self.check(&queue, &ids[..1]);
        // B writes the artifact to disk off its jobs' path; C reads it from there.
        sluice_tests::wait::poll(
            "B's artifact on disk",
            PATIENCE,
            || b.tier("bytes", "l2"),
            |bytes| *bytes > 0.0,
        );
        drop(b);

        let mut tier = std::mem::take(&mut self.l2);
        let c = self.first_two(
            (&queue, &name),
            module,
            &Opts {
                dir: Some(&dir_b),
                key_file: &key_file,
                perf: None,
            },
            &mut tier,
        );
        self.l2 = tier;
        assert_eq!(c.tier("hits_total", "l2"), 1.0, "C loaded from disk");
        assert_eq!(c.tier("hits_total", "l3"), 0.0);
        assert_eq!(c.tier("misses_total", "l3"), 0.0, "C did not compile");
        drop(c);

        let mut tier = std::mem::take(&mut self.l3_only);
        let d = self.first_two(
            (&queue, &name),
            module,
            &Opts {
                dir: None,
                key_file: &key_file,
                perf: None,
            },
            &mut tier,
        );
        self.l3_only = tier;
        assert_eq!(d.tier("hits_total", "l3"), 1.0, "D loaded from Redis");
        assert_eq!(d.tier("misses_total", "l3"), 0.0, "D did not compile");
        drop(d);

        // With COLD_START_PERF=<file>, once more as D under `perf record` (its times
        // are perf's, not kept).
        if let Some(out) = std::env::var_os("COLD_START_PERF").filter(|_| n == 0) {
            let opts = Opts {
                dir: None,
                key_file: &key_file,
                perf: Some(PathBuf::from(out)),
            };
            let e = self.first_two((&queue, &name), module, &opts, &mut Tier::default());
            assert_eq!(e.tier("hits_total", "l3"), 1.0, "E loaded from Redis");
            drop(e);
        }
    }

    /// Prints the tables; returns the fresh replica's (L3) first job, claim → result.
    pub fn report(&self, trials: usize) -> Duration {
        println!(
            "\n## Fresh `sluice-worker serve` process, first job queued before it starts ({trials} trials)"
        );
        println!(
            "(the worker's own timings, median [min–max] in ms: claim → result stored; of that, \
             claim → Sandbox::run (policy, the module's code for the job's engine from its tier, \
             the wasm fetched from Redis only to compile; input) and Sandbox::run (instantiate, \
             run); and process spawn → the result's log line)"
        );
        println!(
            "| first job's code from | claim → result | claim → Sandbox::run | Sandbox::run | process spawn → result seen |"
        );
        println!("| --- | --- | --- | --- | --- |");
        let row = |name: &str, t: &Tier| {
            println!(
                "| {name} | {} | {} | {} | {} |",
                t.recorded.ms_range(),
                t.prepare.ms_range(),
                t.run.ms_range(),
                t.spawn_to_result.ms_range()
            );
        };
        row(
            "compile (worker A: empty disk, nothing in Redis)",
            &self.compile,
        );
        row("L3, Redis (worker B: empty cache directory)", &self.l3);
        row("L3, Redis (worker D: no cache directory)", &self.l3_only);
        row("L2, disk (worker C: B's directory)", &self.l2);
        let (mut l1, mut l1_prepare, mut l1_run) =
            (Samples::default(), Samples::default(), Samples::default());
        for t in [&self.compile, &self.l3, &self.l3_only, &self.l2] {
            l1.extend(&t.l1_recorded);
            l1_prepare.extend(&t.l1_prepare);
            l1_run.extend(&t.l1_run);
        }
        println!(
            "| L1 (each worker's second job) | {} | {} | {} | — |",
            l1.ms_range(),
            l1_prepare.ms_range(),
            l1_run.ms_range()
        );
        println!(
            "\nper job after that (worker B, {} jobs, one at a time): instantiate + run median {} µs, \
             p99 {} µs; claim → result stored median {} µs, p99 {} µs",
            self.run.len(),
            us(self.run.median()),
            us(self.run.p99()),
            us(self.claim_to_result.median()),
            us(self.claim_to_result.p99())
        );
        let (compile, l3) = (self.compile.recorded.median(), self.l3.recorded.median());
        println!(
            "L3 vs compile, claim → result: {:.0}x (target ≥ 20x); fresh replica's first job (L3): \
             {} ms with a cache directory, {} ms without (target ≤ 50 ms)",
            ratio(compile, l3),
            ms(l3),
            ms(self.l3_only.recorded.median())
        );
        l3
    }
}
