//! The module cache: compile a module once per fleet, load it everywhere, and never
//! load compiled code whose integrity was not checked.
//!
//! [`ArtifactCache::module`] looks a module up in three tiers, then compiles:
//!
//! - **L1** (`l1.rs`): loaded modules (`Arc<LoadedModule>`, with their `InstancePre`
//!   per engine) in process, least recently used out past a byte and a count bound;
//!   failed loads remembered too.
//! - **L2** (`l2.rs`): artifacts on local disk, written atomically, mapped by wasmtime
//!   from the descriptor their tag was checked through, bounded in bytes.
//! - **L3**: artifacts in Redis (the protocol's `artifacts` role), shared by the fleet,
//!   on when a cache key is configured. Kept for [`CacheConfig::ttl`] after their last
//!   use (`--cache-ttl`, default 7 days), never longer than their module, and deleted
//!   with it.
//! - **compile**: the function the cache is given ([`compile_with`]: the sandbox's
//!   compiler, a limited `sluice-worker compile` child in a fleet worker), then the
//!   artifact is published to L2 and L3.
//!
//! A module's wasm is fetched only to compile it (then checked against the size cap and
//! its hash): an L2 or L3 artifact is keyed by the module's hash and its tag checked, so
//! it is that module's code, and a fresh worker's first job on a hit reads the artifact
//! alone. Artifacts go to L2 on a writer thread of their own (`writer.rs`), off the
//! job's path; the L3 publish after a compile stays on it (the single flight's waiters
//! are let go only once it is there, and it is small beside the compile).
//!
//! With L3 on, a miss is compiled once per fleet (`flight.rs`): the worker that takes
//! the artifact's lock in Redis compiles, the others wait (bounded by the lock's
//! lifetime: the compile wall-clock limit plus [`LOCK_MARGIN`]) and load what it
//! publishes, or compile themselves if it never comes. A module refused for its own
//! reasons (invalid code, or the compile's memory, CPU or artifact-size limit; not its
//! wall clock, which depends on the host's load) is recorded as refused for the fleet
//! (at most an hour), so a compile bomb is compiled once, not once per worker. A
//! failure that is not the module's (Redis away, the wall clock) drops the module from
//! L1, so the next job loads it afresh.
//!
//! Uploads ask the fleet to precompile (the protocol's precompile stream, followed by
//! `fleet/precompile.rs` through [`ArtifactCache::precompile`]). One engine's artifact
//! is built then, the one the uploader's jobs use by default: the unmetered engine
//! (a job runs unmetered unless it sets a fuel budget), or the metered one for a
//! tenant whose policy sets `max_fuel` (every job of it runs metered). Not both: the
//! other would be compile time and Redis memory spent on an artifact few first jobs
//! need; a job that needs it compiles it, once per fleet, under the same lock.
//!
//! The artifact key (`key.rs`) is the module's SHA-256 plus the engine's fingerprint;
//! artifacts are built lazily, per engine a job needs. Every L2 and L3 artifact carries
//! an HMAC-SHA256 tag (`mac.rs`); [`deserialize`], the one place compiled code is
//! loaded, takes only a [`Verified`] artifact. A tag that does not match is logged,
//! counted (`sluice_module_cache_integrity_failures_total{tier}`), the artifact
//! discarded, and the module recompiled. No API accepts precompiled code: artifacts
//! come only from this cache's own compile function, under its own key.

mod flight;
pub mod key;
pub mod l1;
pub mod l2;
pub mod mac;
pub mod writer;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sluice_shared::queue::redis::{ARTIFACT_TTL, ArtifactId, RedisQueue};
use sluice_shared::{ModuleHash, Outcome};
use tokio::runtime::Handle;
use wasmtime::{Engine, Module};

use crate::metrics::{CacheMetrics, Tier};
use crate::sandbox::{CompiledSource, LoadedModule, Metering, Sandbox};
use key::{ArtifactKey, EngineFingerprint};
use l1::Lru;
use l2::{Disk, DiskError};
use mac::{Artifact, CacheSecret, Mac, Tag, Verified, VerifyError};
use writer::DiskWriter;

/// Compiles wasm for the sandbox's engine `Metering` into a serialized artifact, or
/// says why the module is refused.
pub type CompileFn = dyn Fn(&[u8], Metering) -> Result<Vec<u8>, Outcome> + Send + Sync;

/// Fetches a module's wasm (from wherever modules are stored), when the cache has to
/// compile it.
pub type FetchWasm = dyn Fn() -> Result<Vec<u8>, Outcome> + Send + Sync;

/// A module's wasm, as far as a compile needs it.
enum Wasm<'a> {
    /// Given by the caller (an upload's precompile).
    Given(&'a [u8]),
    /// Fetched when needed (a job's module).
    Fetch(&'a FetchWasm),
}

impl Wasm<'_> {
    /// The bytes of module `hash`, checked against the size cap `max_bytes` and, when
    /// fetched, their hash (the cache keys compiled code by it).
    fn bytes(&self, hash: &ModuleHash, max_bytes: u64) -> Result<Cow<'_, [u8]>, Outcome> {
        let bytes = match self {
            Wasm::Given(bytes) => Cow::Borrowed(*bytes),
            Wasm::Fetch(fetch) => {
                let bytes = fetch()?;
                if ModuleHash::of(&bytes) != *hash {
                    return Err(Outcome::HostError {
                        reason: format!("stored bytes of module {hash} do not match its hash"),
                    });
                }
                Cow::Owned(bytes)
            }
        };
        let size = bytes.len() as u64;
        if size > max_bytes {
            return Err(Outcome::ModuleTooLarge {
                size,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }
}

/// The cache's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most bytes of wasm and artifacts L1 holds.
    pub l1_bytes: u64,
    /// Most modules L1 holds.
    pub l1_count: usize,
    /// L2's directory; `None`: no L2.
    pub dir: Option<PathBuf>,
    /// Most artifact bytes L2 holds.
    pub dir_bytes: u64,
    /// The fleet's shared secret; L3 is on when there is one. Without one, a random
    /// per-process secret tags L2's artifacts.
    pub secret: Option<CacheSecret>,
    /// How long an L3 artifact is kept after it was last stored or read (never longer
    /// than its module).
    pub ttl: Duration,
    /// The compile wall-clock limit: a compile lock lives this plus [`LOCK_MARGIN`].
    pub compile_wall_clock: Duration,
}

/// How much longer than the compile wall-clock limit a compile lock lives (the
/// holder's Redis round trips and deserialization after the compile).
pub const LOCK_MARGIN: Duration = Duration::from_secs(5);

impl CacheConfig {
    /// Default L1 byte bound: 512 MiB.
    pub const DEFAULT_L1_BYTES: u64 = 512 << 20;
    /// Default L1 count bound.
    pub const DEFAULT_L1_COUNT: usize = 256;
    /// Default L2 byte bound: 2 GiB.
    pub const DEFAULT_DIR_BYTES: u64 = 2 << 30;
    /// Default L3 artifact lifetime: 7 days after last use.
    pub const DEFAULT_TTL: Duration = ARTIFACT_TTL;

    /// How long a compile lock lives: the compile wall-clock limit plus
    /// [`LOCK_MARGIN`].
    pub fn lock_ttl(&self) -> Duration {
        self.compile_wall_clock.saturating_add(LOCK_MARGIN)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            l1_bytes: Self::DEFAULT_L1_BYTES,
            l1_count: Self::DEFAULT_L1_COUNT,
            dir: None,
            dir_bytes: Self::DEFAULT_DIR_BYTES,
            secret: None,
            ttl: Self::DEFAULT_TTL,
            compile_wall_clock: crate::compile::CompileLimits::default().wall_clock,
        }
    }
}

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The L2 directory is unusable.
    #[error("module cache: {0}")]
    Disk(#[from] DiskError),
}

/// L3: the queue's Redis, driven from the run threads jobs run on.
struct Shared {
    queue: Arc<RedisQueue>,
    handle: Handle,
}

/// The three tiers and the compile function behind them.
pub struct ArtifactCache {
    sandbox: Arc<Sandbox>,
    fingerprints: [EngineFingerprint; 2],
    mac: Mac,
    l1: Mutex<Lru<ModuleHash, Arc<LoadedModule>, Outcome>>,
    l2: Option<Arc<Disk>>,
    /// Writes artifacts to L2 off the job's path (`None` without L2, or when its
    /// thread could not start: then written in place).
    writer: Option<DiskWriter>,
    l3: Option<Shared>,
    compile: Box<CompileFn>,
    metrics: CacheMetrics,
    /// L3 artifact lifetime.
    ttl: Duration,
    /// Compile lock lifetime.
    lock_ttl: Duration,
    me: Weak<ArtifactCache>,
}

/// Where [`ArtifactCache::precompile`] found a module's code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precompiled {
    /// Compiled here and published.
    Compiled,
    /// Already on disk or in Redis (compiled by another worker, maybe while this one
    /// waited for it).
    Present,
    /// The module does not compile for its own reasons (recorded for the fleet).
    Refused(String),
    /// Something else failed (not the module's fault).
    Failed(String),
}

/// Where a module's code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// L2 or L3.
    Cached,
    /// The compile function.
    Compiled,
}

/// The compile function of a fleet worker: wherever its sandbox compiles (the limited
/// compile child for `sluice-worker serve`, see [`Sandbox::precompile`]).
pub fn compile_with(sandbox: Arc<Sandbox>) -> Box<CompileFn> {
    Box::new(move |wasm, metering| sandbox.precompile(metering, wasm))
}

/// Loads a verified artifact for `engine` (see [`crate::compile::load_artifact`], the
/// one place compiled code is deserialized).
pub fn deserialize(engine: &Engine, verified: Verified<'_>) -> wasmtime::Result<Module> {
    crate::compile::load_artifact(engine, verified)
}

impl ArtifactCache {
    /// A cache for `sandbox`'s engines; L3 over `queue` when `config` has a secret.
    /// Must be called inside the tokio runtime when `queue` is given.
    pub fn new(
        sandbox: Arc<Sandbox>,
        config: &CacheConfig,
        queue: Option<Arc<RedisQueue>>,
        compile: Box<CompileFn>,
        metrics: CacheMetrics,
    ) -> Result<Arc<Self>, CacheError> {
        let l3 = match (&config.secret, queue) {
            (Some(_), Some(queue)) => Some(Shared {
                queue,
                handle: Handle::current(),
            }),
            _ => None,
        };
        let mac = Mac::new(config.secret.clone().unwrap_or_else(CacheSecret::random));
        let l2 = config
            .dir
            .as_deref()
            .map(|dir| Disk::open_dir(dir, config.dir_bytes, &mac.key_id()).map(Arc::new))
            .transpose()?;
        if let Some(disk) = &l2 {
            metrics.set_bytes(Tier::L2, disk.bytes());
        }
        let writer = l2
            .as_ref()
            .and_then(|disk| DiskWriter::start(disk.clone(), metrics.clone()));
        let fingerprints = Metering::ALL.map(|m| EngineFingerprint::of(sandbox.engine(m), m));
        Ok(Arc::new_cyclic(|me| ArtifactCache {
            sandbox,
            fingerprints,
            mac,
            l1: Mutex::new(Lru::new(config.l1_bytes, config.l1_count)),
            l2,
            writer,
            l3,
            compile,
            metrics,
            ttl: config.ttl,
            lock_ttl: config.lock_ttl(),
            me: me.clone(),
        }))
    }

    /// The loaded module `hash`, from L1 or loaded now. Its code comes, when a job
    /// first needs an engine ([`LoadedModule::load_code_for`]), from L2, L3, or the
    /// compile function over the wasm `fetch` returns (called only then, at most once
    /// per engine; a fetch error is that job's outcome, not remembered). Loads that
    /// fail for the module's own reasons are remembered.
    pub fn module(
        &self,
        hash: &ModuleHash,
        fetch: impl Fn() -> Result<Vec<u8>, Outcome> + Send + Sync + 'static,
    ) -> Result<Arc<LoadedModule>, Outcome> {
        if let Some(known) = self.l1.lock().get(hash) {
            if known.is_ok() {
                self.metrics.hit(Tier::L1);
            }
            return known;
        }
        self.metrics.miss(Tier::L1);
        let source = Box::new(CacheSource {
            cache: self.me.clone(),
            hash: *hash,
            fetch: Box::new(fetch),
        });
        let loaded = self.sandbox.load_compiled(*hash, source);
        let mut l1 = self.l1.lock();
        // Another thread may have loaded it meanwhile: share its copy (and its code).
        if let Some(Ok(known)) = l1.get(hash) {
            return Ok(known);
        }
        // Counted by its artifacts' bytes as they load (no wasm is held).
        l1.insert(*hash, loaded.clone(), 0);
        self.metrics.set_bytes(Tier::L1, l1.bytes());
        Ok(loaded)
    }

    /// Waits until the artifacts queued for L2 so far are on disk (a later lookup, in
    /// this process or another, then finds them there).
    pub fn flush_disk(&self) {
        if let Some(writer) = &self.writer {
            writer.flush();
        }
    }

    /// Drops module `hash` from L1 (jobs holding it keep their copy).
    fn forget(&self, hash: &ModuleHash) {
        let mut l1 = self.l1.lock();
        l1.remove(hash);
        self.metrics.set_bytes(Tier::L1, l1.bytes());
    }

    /// Counts `bytes` of artifact against module `hash` in L1.
    fn held(&self, hash: &ModuleHash, bytes: u64) {
        let mut l1 = self.l1.lock();
        l1.grow(hash, bytes);
        self.metrics.set_bytes(Tier::L1, l1.bytes());
    }

    /// The fleet's name for module `hash`'s artifact for engine `metering`.
    pub fn artifact_id(&self, hash: &ModuleHash, metering: Metering) -> ArtifactId {
        self.key(*hash, metering).id()
    }

    fn key(&self, module: ModuleHash, metering: Metering) -> ArtifactKey {
        ArtifactKey {
            module,
            engine: self.fingerprints[metering as usize],
        }
    }

    /// Makes sure module `hash` (`wasm`) has an artifact for engine `metering` on disk
    /// and in Redis, compiling it (once per fleet) if it has none: an upload's
    /// precompile. Nothing is added to L1.
    pub fn precompile(&self, hash: &ModuleHash, wasm: &[u8], metering: Metering) -> Precompiled {
        match self.compiled_from(*hash, &Wasm::Given(wasm), metering) {
            Ok((_, Origin::Cached)) => Precompiled::Present,
            Ok((_, Origin::Compiled)) => Precompiled::Compiled,
            Err(Outcome::InvalidModule { reason }) => Precompiled::Refused(reason),
            Err(other) => Precompiled::Failed(other.to_string()),
        }
    }

    /// The module compiled for engine `metering`: from L2, L3, or compiled and
    /// published.
    fn compiled(
        &self,
        hash: ModuleHash,
        wasm: &FetchWasm,
        metering: Metering,
    ) -> Result<Module, Outcome> {
        self.compiled_from(hash, &Wasm::Fetch(wasm), metering)
            .map(|(module, _)| module)
    }

    /// [`Self::compiled`], and whether it was compiled here.
    fn compiled_from(
        &self,
        hash: ModuleHash,
        wasm: &Wasm<'_>,
        metering: Metering,
    ) -> Result<(Module, Origin), Outcome> {
        let key = self.key(hash, metering);
        let engine = self.sandbox.engine(metering);
        if let Some(module) = self.load_from_disk(&key, engine) {
            return Ok((module, Origin::Cached));
        }
        match &self.l3 {
            Some(l3) => self.through_fleet(l3, &key, wasm, metering),
            None => self
                .compile_and_publish(&key, wasm, metering)
                .map(|module| (module, Origin::Compiled)),
        }
    }

    /// Compiles `wasm` for engine `metering`, loads the artifact and publishes it to
    /// L2 and L3.
    fn compile_and_publish(
        &self,
        key: &ArtifactKey,
        wasm: &Wasm<'_>,
        metering: Metering,
    ) -> Result<Module, Outcome> {
        let hash = key.module;
        let engine = self.sandbox.engine(metering);
        let wasm = wasm.bytes(&hash, self.sandbox.config().max_module_bytes)?;
        let bytes = (self.compile)(&wasm, metering)?;
        drop(wasm);
        let tag = self.mac.sign(key, &bytes);
        let module = self
            .mac
            .verify(key, Artifact::Bytes(&bytes), &tag)
            .map_err(|e| e.to_string())
            .and_then(|verified| deserialize(engine, verified).map_err(|e| format!("{e:#}")))
            .map_err(|reason| Outcome::HostError {
                reason: format!("loading the artifact just compiled for module {hash}: {reason}"),
            })?;
        if let Some(l3) = &self.l3 {
            let put = l3.handle.block_on(l3.queue.artifacts().put(
                &key.id(),
                &tag.0,
                &bytes,
                self.ttl,
            ));
            match put {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(artifact = %key, "module no longer stored; artifact not published");
                }
                Err(error) => {
                    tracing::warn!(artifact = %key, %error, "could not publish the artifact to Redis");
                }
            }
        }
        self.held(&hash, bytes.len() as u64);
        self.publish_disk(key, bytes, &tag);
        Ok(module)
    }

    /// L2's artifact for `key`, if there is one whose tag matches and that loads.
    fn load_from_disk(&self, key: &ArtifactKey, engine: &Engine) -> Option<Module> {
        let disk = self.l2.as_ref()?;
        let found = match disk.open(key) {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(artifact = %key, %error, "could not read the artifact on disk");
                None
            }
        };
        if let Some(stored) = found {
            let len = stored.file.metadata().map_or(0, |m| m.len());
            match self
                .mac
                .verify(key, Artifact::File(stored.file), &stored.tag)
            {
                Ok(verified) => match deserialize(engine, verified) {
                    Ok(module) => {
                        self.metrics.hit(Tier::L2);
                        self.held(&key.module, len);
                        return Some(module);
                    }
                    Err(error) => {
                        tracing::warn!(artifact = %key, error = %format!("{error:#}"),
                            "artifact on disk passed its integrity check but does not load; discarding it");
                        disk.remove(key);
                    }
                },
                Err(VerifyError::Mismatch(_)) => {
                    tracing::warn!(artifact = %key, tier = "l2",
                        "artifact on disk failed its integrity check; discarding it");
                    self.metrics.integrity_failure(Tier::L2);
                    disk.remove(key);
                }
                Err(error) => {
                    tracing::warn!(artifact = %key, %error, "could not check the artifact on disk");
                }
            }
            self.metrics.set_bytes(Tier::L2, disk.bytes());
        }
        self.metrics.miss(Tier::L2);
        None
    }

    /// L3's artifact for `key`, if there is one whose tag matches and that loads (then
    /// also written to L2). A miss is not counted here: the single flight may look
    /// several times in one lookup, and counts one miss when it ends without a hit.
    fn load_from_redis(&self, l3: &Shared, key: &ArtifactKey, engine: &Engine) -> Option<Module> {
        let found = match l3
            .handle
            .block_on(l3.queue.artifacts().get(&key.id(), self.ttl))
        {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(artifact = %key, %error, "could not read the artifact from Redis");
                None
            }
        };
        if let Some(stored) = found {
            let tag = Tag(stored.tag);
            match self.mac.verify(key, Artifact::Bytes(&stored.bytes), &tag) {
                Ok(verified) => match deserialize(engine, verified) {
                    Ok(module) => {
                        self.metrics.hit(Tier::L3);
                        self.held(&key.module, stored.bytes.len() as u64);
                        self.publish_disk(key, stored.bytes, &tag);
                        return Some(module);
                    }
                    Err(error) => {
                        tracing::warn!(artifact = %key, error = %format!("{error:#}"),
                            "artifact in Redis passed its integrity check but does not load; recompiling");
                    }
                },
                Err(error) => {
                    tracing::warn!(artifact = %key, tier = "l3", %error,
                        "artifact in Redis failed its integrity check; discarding it");
                    self.metrics.integrity_failure(Tier::L3);
                }
            }
        }
        None
    }

    /// Writes an artifact to L2, on the writer thread (best effort: a full queue, or a
    /// full or broken disk, costs an L3 read or a compile later, not this job).
    fn publish_disk(&self, key: &ArtifactKey, bytes: Vec<u8>, tag: &Tag) {
        let Some(disk) = &self.l2 else { return };
        if let Some(writer) = &self.writer {
            writer.put(key, bytes, tag);
            return;
        }
        if let Err(error) = disk.put(key, &bytes, tag) {
            tracing::warn!(artifact = %key, %error, "could not write the artifact to disk");
        }
        self.metrics.set_bytes(Tier::L2, disk.bytes());
    }
}

/// A loaded module's code, per engine, through the cache that loaded it.
struct CacheSource {
    /// Weak: the cache holds the loaded module in L1.
    cache: Weak<ArtifactCache>,
    hash: ModuleHash,
    /// The module's wasm, fetched only to compile.
    fetch: Box<FetchWasm>,
}

impl CompiledSource for CacheSource {
    fn compiled(&self, _sandbox: &Sandbox, metering: Metering) -> Result<Module, Outcome> {
        let cache = self.cache.upgrade().ok_or_else(|| Outcome::HostError {
            reason: "the module cache is shut down".into(),
        })?;
        let compiled = cache.compiled(self.hash, &*self.fetch, metering);
        if let Err(Outcome::HostError { .. }) = &compiled {
            // Not the module's fault (Redis away, a compile past its wall clock on a
            // busy host): the loaded module keeps this answer for the engine, so drop
            // it from L1 and let the next job load the module afresh.
            cache.forget(&self.hash);
        }
        compiled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::SandboxConfig;
    use crate::metrics::WorkerMetrics;
    use sluice_shared::EntryPoint;

    const WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

    struct Setup {
        sandbox: Arc<Sandbox>,
        compiles: Arc<AtomicUsize>,
        metrics: CacheMetrics,
        config: CacheConfig,
    }

    impl Setup {
        fn new(dir: &std::path::Path) -> Self {
            let sandbox = Arc::new(
                Sandbox::new(SandboxConfig {
                    slots: 2,
                    ..SandboxConfig::default()
                })
                .unwrap(),
            );
            Setup {
                sandbox,
                compiles: Arc::default(),
                metrics: WorkerMetrics::new().cache,
                config: CacheConfig {
                    dir: Some(dir.to_owned()),
                    secret: Some(CacheSecret::new(b"a test secret of some length").unwrap()),
                    ..CacheConfig::default()
                },
            }
        }

        /// A cache with empty L1 over the same disk and secret (a fresh process).
        fn cache(&self) -> Arc<ArtifactCache> {
            let compiles = self.compiles.clone();
            let inner = compile_with(self.sandbox.clone());
            ArtifactCache::new(
                self.sandbox.clone(),
                &self.config,
                None,
                Box::new(move |wasm, metering| {
                    compiles.fetch_add(1, Ordering::SeqCst);
                    inner(wasm, metering)
                }),
                self.metrics.clone(),
            )
            .unwrap()
        }

        fn compiles(&self) -> usize {
            self.compiles.load(Ordering::SeqCst)
        }

        fn count(&self, vec: &IntCounterVec, tier: Tier) -> u64 {
            vec.with_label_values(&[tier.as_str()]).get()
        }
    }

    use prometheus::IntCounterVec;

    /// Loads `wasm` through `cache` and prepares it for the unmetered engine; waits for
    /// its L2 write.
    fn load(cache: &ArtifactCache, wasm: &[u8], sandbox: &Sandbox) -> EntryPoint {
        let owned = wasm.to_vec();
        let module = cache
            .module(&ModuleHash::of(wasm), move || Ok(owned.clone()))
            .unwrap();
        let entry = module.default_entry(sandbox);
        cache.flush_disk();
        entry
    }

    fn artifact_files(dir: &std::path::Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    }

    #[test]
    fn disk_artifacts_are_reused_and_a_flipped_byte_is_caught_and_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new(dir.path());
        let wasm = WAT.as_bytes();
        let first = s.cache();
        assert_eq!(load(&first, wasm, &s.sandbox), EntryPoint::Command);
        assert_eq!(s.compiles(), 1);
        // The same module again: L1, nothing compiled or read.
        load(&first, wasm, &s.sandbox);
        assert_eq!(s.count(&s.metrics.hits, Tier::L1), 1);
        assert_eq!(s.compiles(), 1);
        drop(first);

        // A fresh cache over the same disk loads the artifact without compiling.
        load(&s.cache(), wasm, &s.sandbox);
        assert_eq!(s.compiles(), 1);
        assert_eq!(s.count(&s.metrics.hits, Tier::L2), 1);

        // One byte flipped on disk: caught, counted, recompiled, rewritten.
        let files = artifact_files(dir.path());
        assert_eq!(files.len(), 1);
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&files[0], &bytes).unwrap();
        assert_eq!(load(&s.cache(), wasm, &s.sandbox), EntryPoint::Command);
        assert_eq!(s.count(&s.metrics.integrity_failures, Tier::L2), 1);
        assert_eq!(s.compiles(), 2);
        assert_ne!(std::fs::read(&files[0]).unwrap(), bytes);
    }

    #[test]
    fn a_cache_hit_never_fetches_the_wasm_and_a_compile_checks_what_it_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new(dir.path());
        let wasm = WAT.as_bytes();
        let hash = ModuleHash::of(wasm);
        load(&s.cache(), wasm, &s.sandbox);
        assert_eq!(s.compiles(), 1);
        // A fresh cache: the artifact on disk is that module's code; no wasm needed.
        let fresh = s.cache();
        let module = fresh
            .module(&hash, || panic!("fetched the wasm on an L2 hit"))
            .unwrap();
        let job = sluice_shared::Job::new(hash, sluice_shared::JobInput::Inline(Vec::new()));
        module.load_code_for(&s.sandbox, &job).unwrap();
        assert_eq!(s.count(&s.metrics.hits, Tier::L2), 1);

        // A compile (a metered job's first run) fetches, and refuses bytes that are not
        // the module's.
        let mut metered = job.clone();
        metered.limits.fuel = Some(1_000_000);
        let another = s.cache();
        let other = another.module(&hash, || Ok(b"(module)".to_vec())).unwrap();
        match other.load_code_for(&s.sandbox, &metered) {
            Err(Outcome::HostError { reason }) => assert!(reason.contains("do not match")),
            other => panic!("wrong outcome: {other:?}"),
        }
        assert_eq!(s.compiles(), 1);
    }

    #[test]
    fn a_fetched_module_over_the_size_cap_is_refused_before_compiling() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Setup::new(dir.path());
        s.sandbox = Arc::new(
            Sandbox::new(SandboxConfig {
                slots: 2,
                max_module_bytes: 16,
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        let wasm = WAT.as_bytes().to_vec();
        let hash = ModuleHash::of(&wasm);
        let cache = s.cache();
        let module = cache.module(&hash, move || Ok(wasm.clone())).unwrap();
        let job = sluice_shared::Job::new(hash, sluice_shared::JobInput::Inline(Vec::new()));
        assert_eq!(
            module.load_code_for(&s.sandbox, &job),
            Err(Outcome::ModuleTooLarge {
                size: WAT.len() as u64,
                limit: 16
            })
        );
        assert_eq!(s.compiles(), 0);
    }

    #[test]
    fn another_key_never_loads_this_ones_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Setup::new(dir.path());
        load(&s.cache(), WAT.as_bytes(), &s.sandbox);
        s.config.secret = None; // a random per-process key
        load(&s.cache(), WAT.as_bytes(), &s.sandbox);
        assert_eq!(s.compiles(), 2);
        assert_eq!(s.count(&s.metrics.hits, Tier::L2), 0);
    }

    #[test]
    fn a_bad_module_is_compiled_once_and_remembered_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup::new(dir.path());
        let cache = s.cache();
        let bad = b"\0asm\x01\0\0\0\x01garbage".as_slice();
        for _ in 0..3 {
            // A module that does not compile gets a command (whose run says why).
            assert_eq!(load(&cache, bad, &s.sandbox), EntryPoint::Command);
        }
        assert_eq!(s.compiles(), 1);
        assert!(artifact_files(dir.path()).is_empty());
    }

    #[test]
    fn past_the_count_bound_a_module_is_loaded_again_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Setup::new(dir.path());
        s.config.l1_count = 1;
        let cache = s.cache();
        let other = r#"(module (memory (export "memory") 1) (func (export "_start") nop))"#;
        load(&cache, WAT.as_bytes(), &s.sandbox);
        let held = cache
            .module(&ModuleHash::of(WAT.as_bytes()), || unreachable!())
            .unwrap();
        load(&cache, other.as_bytes(), &s.sandbox);
        assert_eq!(s.compiles(), 2);
        // The first was evicted (a job still holds it) and comes back from disk.
        load(&cache, WAT.as_bytes(), &s.sandbox);
        assert_eq!(s.compiles(), 2);
        assert_eq!(s.count(&s.metrics.hits, Tier::L2), 1);
        assert_eq!(held.hash(), ModuleHash::of(WAT.as_bytes()));
    }
}
