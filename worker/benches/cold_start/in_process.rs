//! The cache's tiers in process, isolated from process start: `ArtifactCache` driven
//! directly, each tier N times from an empty L1, then what an L3 load is made of, then
//! the per-job instantiate-and-run of a tiny input.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{Job, JobInput, JobOutput, ModuleHash, Outcome};
use sluice_worker::cache::key::{ArtifactKey, EngineFingerprint};
use sluice_worker::cache::l2::Disk;
use sluice_worker::cache::mac::{Artifact, CacheSecret, Mac, Tag};
use sluice_worker::cache::{self, ArtifactCache, CacheConfig};
use sluice_worker::compile::Compiler;
use sluice_worker::compile::engine::EngineSettings;
use sluice_worker::compile::limits::CompileLimits;
use sluice_worker::metrics::{Tier, WorkerMetrics};
use sluice_worker::{LoadedModule, Metering, Sandbox, SandboxConfig};
use tokio::runtime::Runtime;

use crate::stats::{Samples, ms, ratio, us};

/// The input every job of the benchmark reads.
pub const INPUT: &[u8] = b"hello";

/// A job of `module` over [`INPUT`].
pub fn job(module: ModuleHash) -> Job {
    Job::new(module, JobInput::Inline(INPUT.to_vec()))
}

/// A `Write` whose bytes can be read after the sandbox dropped it.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);

impl Write for Collect {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `job` once and returns its output; panics unless it succeeded.
pub fn run(sandbox: &Sandbox, module: &LoadedModule, job: &Job) -> Vec<u8> {
    let out = Collect::default();
    let result = sandbox.run(
        module,
        job,
        Box::new(std::io::Cursor::new(INPUT.to_vec())),
        Box::new(out.clone()),
    );
    assert_eq!(result.outcome, Outcome::Success, "{result:?}");
    assert!(matches!(
        result.output,
        JobOutput::Written | JobOutput::Inline(_)
    ));
    out.0.lock().clone()
}

/// What the in-process part needs: a sandbox that compiles in a `sluice-worker
/// compile` child as a fleet worker does, a Redis queue for L3, the fleet's secret.
pub struct Bench {
    sandbox: Arc<Sandbox>,
    queue: Arc<RedisQueue>,
    rt: Runtime,
    secret: CacheSecret,
    wasm: Arc<[u8]>,
    hash: ModuleHash,
    /// The module's output for [`INPUT`], as every tier must reproduce it.
    pub expected: Vec<u8>,
}

/// One tier's load times, with the first job's run after each load.
#[derive(Default)]
struct Figure {
    load: Samples,
    first_run: Samples,
}

impl Bench {
    /// Sets up over `queue` (driven by `rt`) for `wasm`.
    pub fn new(rt: Runtime, queue: RedisQueue, wasm: &[u8]) -> Self {
        let config = SandboxConfig {
            slots: 4,
            ..SandboxConfig::default()
        };
        let program = sluice_tests::bin("sluice-worker").get_program().to_owned();
        let compiler = Compiler::new(CompileLimits::default(), EngineSettings::of(&config))
            .expect("default compile limits")
            .with_program(program);
        let sandbox = Arc::new(Sandbox::with_compiler(config, compiler).expect("sandbox"));
        // Stored, as uploaded: an artifact is published only for a stored module (it
        // lives no longer than its module).
        let hash = rt
            .block_on(queue.modules().put(wasm, None))
            .expect("store the module");
        assert_eq!(hash, ModuleHash::of(wasm));
        let mut bench = Bench {
            sandbox,
            queue: Arc::new(queue),
            rt,
            secret: CacheSecret::new(b"the cold-start benchmark's fleet key").unwrap(),
            wasm: wasm.into(),
            hash,
            expected: Vec::new(),
        };
        let fresh = Sandbox::new(SandboxConfig::default()).expect("sandbox");
        let module = fresh.load_module(wasm).expect("the module loads");
        bench.expected = run(&fresh, &module, &job(hash));
        bench
    }

    /// A cache with an empty L1: L2 in `dir` if given, L3 if `l3`.
    fn cache(&self, dir: Option<&Path>, l3: bool) -> (Arc<ArtifactCache>, WorkerMetrics) {
        let metrics = WorkerMetrics::new();
        let config = CacheConfig {
            dir: dir.map(Path::to_owned),
            secret: Some(self.secret.clone()),
            ..CacheConfig::default()
        };
        let _inside = self.rt.enter();
        let cache = ArtifactCache::new(
            self.sandbox.clone(),
            &config,
            l3.then(|| self.queue.clone()),
            cache::compile_with(self.sandbox.clone()),
            metrics.cache.clone(),
        )
        .expect("cache");
        (cache, metrics)
    }

    /// Loads the module through `cache` with its code for the unmetered engine (what a
    /// job's first `Sandbox::run` needs), timed.
    fn load(&self, cache: &ArtifactCache) -> (Arc<LoadedModule>, Duration) {
        let started = Instant::now();
        // Fetched only if the cache has to compile, as a fleet worker's RedisEnv does.
        let wasm = self.wasm.clone();
        let module = cache
            .module(&self.hash, move || Ok(wasm.to_vec()))
            .expect("module");
        module.default_entry(&self.sandbox);
        (module, started.elapsed())
    }

    /// Loads through a fresh cache, asserts that `tier` answered (`None`: compiled),
    /// runs the first job; returns the load and first-run times.
    fn once(&self, dir: Option<&Path>, l3: bool, tier: Option<Tier>, into: &mut Figure) {
        let (cache, metrics) = self.cache(dir, l3);
        let (module, load) = self.load(&cache);
        let hits = |t: Tier| metrics.cache.hits.with_label_values(&[t.as_str()]).get();
        match tier {
            Some(t) => assert_eq!(hits(t), 1, "expected a hit in {}", t.as_str()),
            None => {
                for t in [Tier::L1, Tier::L2, Tier::L3] {
                    assert_eq!(
                        hits(t),
                        0,
                        "expected a compile, not a hit in {}",
                        t.as_str()
                    );
                }
            }
        }
        let started = Instant::now();
        assert_eq!(run(&self.sandbox, &module, &job(self.hash)), self.expected);
        into.load.push(load);
        into.first_run.push(started.elapsed());
    }

    /// The whole in-process part: prints its tables, returns the compile and L3 load
    /// medians.
    pub fn run_all(&self, reps: usize, compile_reps: usize) -> (Duration, Duration) {
        let scratch = tempfile::tempdir().expect("temp dir");
        let disk = scratch.path().join("l2");
        let key = ArtifactKey {
            module: self.hash,
            engine: EngineFingerprint::of(self.sandbox.engine(Metering::Off), Metering::Off),
        };

        let mut bare = Samples::default();
        for _ in 0..compile_reps {
            let started = Instant::now();
            self.sandbox
                .engine(Metering::Off)
                .precompile_module(&self.wasm)
                .expect("compiles");
            bare.push(started.elapsed());
        }
        let mut compiled = Figure::default();
        for _ in 0..compile_reps {
            // Nothing below L1 but the compile child; the last one publishes to L3.
            self.once(None, false, None, &mut compiled);
        }
        // Publish: a cache with L3 and L2 that compiles once.
        let (publisher, _m) = self.cache(Some(&disk), true);
        self.load(&publisher);
        publisher.flush_disk();
        drop(publisher);

        let mut l3 = Figure::default();
        let mut l2 = Figure::default();
        let mut l1 = Figure::default();
        for _ in 0..reps {
            self.once(None, true, Some(Tier::L3), &mut l3);
            self.once(Some(&disk), false, Some(Tier::L2), &mut l2);
        }
        let (cache, _m) = self.cache(None, true);
        self.load(&cache);
        for _ in 0..reps {
            let started = Instant::now();
            let (module, _) = self.load(&cache);
            l1.load.push(started.elapsed());
            let started = Instant::now();
            run(&self.sandbox, &module, &job(self.hash));
            l1.first_run.push(started.elapsed());
        }

        println!("\n## In process: ArtifactCache load of the module, by tier");
        println!(
            "(load = ArtifactCache::module + its InstancePre for the unmetered engine, from an empty L1; \
             first run = Sandbox::run of the first job after it; {reps} loads per tier, {compile_reps} compiles)"
        );
        println!(
            "| source of the code | load, median (ms) | load, p99 (ms) | first run, median (ms) |"
        );
        println!("| --- | --- | --- | --- |");
        let row = |name: &str, f: &Figure| {
            println!(
                "| {name} | {} | {} | {} |",
                ms(f.load.median()),
                ms(f.load.p99()),
                ms(f.first_run.median())
            );
        };
        println!(
            "| Engine::precompile_module alone (in process, no cache) | {} | {} | — |",
            ms(bare.median()),
            ms(bare.p99())
        );
        row("compile (the `sluice-worker compile` child)", &compiled);
        row("L3 (Redis)", &l3);
        row("L2 (disk, page cache warm)", &l2);
        row("L1 (in process)", &l1);
        println!(
            "L3 vs compile: {:.0}x (target ≥ 20x); L2 vs compile: {:.0}x",
            ratio(compiled.load.median(), l3.load.median()),
            ratio(compiled.load.median(), l2.load.median())
        );

        self.breakdown(&key, &disk, reps);
        self.per_job(&cache, reps * 50);
        (compiled.load.median(), l3.load.median())
    }

    /// What an L3 load is made of, each part alone, and the L2 write a worker with a
    /// cache directory makes on an L3 hit.
    fn breakdown(&self, key: &ArtifactKey, disk: &Path, reps: usize) {
        let mac = Mac::new(self.secret.clone());
        let engine = self.sandbox.engine(Metering::Off);
        let (mut get, mut hmac, mut deser) =
            (Samples::default(), Samples::default(), Samples::default());
        let mut unsynced = Samples::default();
        let (mut write, mut open_file, mut deser_file) =
            (Samples::default(), Samples::default(), Samples::default());
        let scratch = tempfile::tempdir().expect("temp dir");
        let mut size = 0;
        for i in 0..reps {
            let started = Instant::now();
            let stored = self
                .rt
                .block_on(
                    self.queue
                        .artifacts()
                        .get(&key.id(), CacheConfig::DEFAULT_TTL),
                )
                .expect("GET")
                .expect("the artifact is in Redis");
            get.push(started.elapsed());
            size = stored.bytes.len();
            let tag = Tag(stored.tag);
            let started = Instant::now();
            mac.verify(key, Artifact::Bytes(&stored.bytes), &tag)
                .expect("tag");
            hmac.push(started.elapsed());
            let verified = mac
                .verify(key, Artifact::Bytes(&stored.bytes), &tag)
                .expect("tag");
            let started = Instant::now();
            cache::deserialize(engine, verified).expect("deserialize");
            deser.push(started.elapsed());
            // The L2 write of an L3 hit, into a directory of its own each time.
            let dir = scratch.path().join(i.to_string());
            let l2 =
                Disk::open_dir(&dir, CacheConfig::DEFAULT_DIR_BYTES, &mac.key_id()).expect("disk");
            let started = Instant::now();
            l2.put(key, &stored.bytes, &tag).expect("write");
            write.push(started.elapsed());
            // For comparison: the same bytes written and renamed without an fsync.
            let (temp, path) = (dir.join("unsynced.tmp"), dir.join("unsynced"));
            let started = Instant::now();
            std::fs::write(&temp, &stored.bytes).expect("write");
            std::fs::rename(&temp, &path).expect("rename");
            unsynced.push(started.elapsed());
            // And an L2 load: check the file through its descriptor, then map it.
            let l2 =
                Disk::open_dir(disk, CacheConfig::DEFAULT_DIR_BYTES, &mac.key_id()).expect("disk");
            let started = Instant::now();
            let found = l2.open(key).expect("open").expect("on disk");
            let verified = mac
                .verify(key, Artifact::File(found.file), &found.tag)
                .expect("tag");
            open_file.push(started.elapsed());
            let started = Instant::now();
            cache::deserialize(engine, verified).expect("deserialize");
            deser_file.push(started.elapsed());
        }
        let mib = size as f64 / f64::from(1 << 20);
        println!("\n## What an L3 (and an L2) load is made of ({reps} times each)");
        println!("| step | median (ms) | p99 (ms) |");
        println!("| --- | --- | --- |");
        let row = |name: &str, s: &Samples| {
            println!("| {name} | {} | {} |", ms(s.median()), ms(s.p99()));
        };
        row(
            &format!("L3: Redis GETEX of the {mib:.2} MiB artifact"),
            &get,
        );
        row(&format!("L3: HMAC-SHA256 over {mib:.2} MiB"), &hmac);
        row(
            "L3: Module::deserialize (copy into executable memory)",
            &deser,
        );
        row(
            "L3 hit's write to L2 (two files, write + fsync + rename; on the writer thread, off the job's path)",
            &write,
        );
        row(
            "for comparison: the artifact written + renamed, no fsync",
            &unsynced,
        );
        row("L2: open + HMAC read through the descriptor", &open_file);
        row("L2: Module::deserialize_open_file (mmap)", &deser_file);
    }

    /// Instantiate + run of a tiny input, `n` times, from L1.
    fn per_job(&self, cache: &ArtifactCache, n: usize) {
        let (module, _) = self.load(cache);
        let job = job(self.hash);
        let (mut wall, mut inside) = (Samples::default(), Samples::default());
        for _ in 0..n {
            let started = Instant::now();
            let result = self.sandbox.run(
                &module,
                &job,
                Box::new(std::io::Cursor::new(INPUT)),
                Box::new(std::io::sink()),
            );
            wall.push(started.elapsed());
            assert_eq!(result.outcome, Outcome::Success);
            inside.push_us(result.stats.wall_time_us);
        }
        println!(
            "\n## Per job after the load: Sandbox::run of a {}-byte input ({n} jobs)",
            INPUT.len()
        );
        println!("| figure | median (µs) | p99 (µs) |");
        println!("| --- | --- | --- |");
        println!(
            "| Sandbox::run, whole call | {} | {} |",
            us(wall.median()),
            us(wall.p99())
        );
        println!(
            "| instantiate + run (the result's wall_time_us) | {} | {} |",
            us(inside.median()),
            us(inside.p99())
        );
    }
}
