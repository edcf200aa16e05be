//! `sluice-worker serve` settings: flags, `SLUICE_*` environment variables and a TOML
//! file, merged in that order of precedence and validated before anything starts, so a
//! bad value stops the worker at once with the setting named in all three spellings
//! instead of showing up later as a spinning renewal or a broken hash tag.
//!
//! [`FleetArgs`] is the settings as given, every one optional: clap reads the flags and
//! variables into it, serde reads the file into another, and [`FleetArgs::merged`]
//! lays the first over the second as TOML tables, so no setting can be left out of the
//! merge. [`FleetArgs::load`] then applies the defaults (those of [`ExecutorConfig`],
//! the one place they are written) and checks every value, giving a [`FleetConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sluice_shared::units::{parse_duration, parse_size};

use crate::cache::CacheConfig;
use crate::cache::mac::CacheSecret;
use crate::compile::CompileLimits;
use crate::config::DirGrant;
use crate::executor::ExecutorConfig;

/// `serve` settings as given, each `None` where unset. Each flag has a `SLUICE_*`
/// environment equivalent, and any left unset is taken from `--config FILE` (TOML with
/// the same names, `_` for `-`). Durations take units (`500ms`, `30s`, `1h`) in all
/// three, read by [`parse_duration`].
#[derive(clap::Args, Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL", hide_env_values = true)]
    #[serde(rename = "redis")]
    pub redis_url: Option<String>,
    /// Queue name (letters, digits, `-`, `_`, `.`; at most 64). Default `default`.
    #[arg(long, env = "SLUICE_QUEUE")]
    pub queue: Option<String>,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// The Redis URL names a Redis Cluster (one or more seed nodes, comma-separated).
    /// Default false: one Redis server.
    #[arg(long, env = "SLUICE_REDIS_CLUSTER", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: Option<bool>,
    /// Job slots (jobs run at once), 1 to 1024. Default: 4 per core.
    #[arg(long, env = "SLUICE_CONCURRENCY", value_parser = parsed::<usize>(field::CONCURRENCY))]
    pub concurrency: Option<usize>,
    /// Threads for the worker's async side (claims, Redis, results, /metrics; guests run
    /// on threads of their own), 1 to 64. Default 1: the main thread, the least CPU per
    /// job; more only where that thread fills a core.
    #[arg(long, env = "SLUICE_ASYNC_THREADS", value_parser = parsed::<usize>(field::ASYNC_THREADS))]
    pub async_threads: Option<usize>,
    /// Serve /metrics, /healthz (liveness) and /readyz (readiness) on this address
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, env = "SLUICE_METRICS_ADDR", value_parser = parsed::<SocketAddr>(field::METRICS_ADDR))]
    pub metrics_addr: Option<SocketAddr>,
    /// Tenants named in the per-tenant metrics: the first N this worker sees keep
    /// their name, the rest are summed as `other`. 0 to 1000; default 20.
    #[arg(long, env = "SLUICE_METRICS_MAX_TENANTS", value_parser = parsed::<usize>(field::METRICS_MAX_TENANTS))]
    pub metrics_max_tenants: Option<usize>,
    /// Visibility timeout: a job whose worker stops renewing its lease for this long is
    /// taken over by another worker. 1s to 24h; default 30s.
    #[arg(long, env = "SLUICE_LEASE", value_parser = duration(field::LEASE))]
    #[serde(default, with = "duration_text")]
    pub lease: Option<Duration>,
    /// On SIGTERM, how long jobs in flight may take before they are released. Up to
    /// 24h; default 30s.
    #[arg(long, env = "SLUICE_GRACE", value_parser = duration(field::GRACE))]
    #[serde(default, with = "duration_text")]
    pub grace: Option<Duration>,
    /// How long a run may go past its deadline (blocked in a host call) before it is
    /// recorded as timeout and its lease is no longer renewed. Up to 1h; default 5s.
    #[arg(long, env = "SLUICE_WATCHDOG_GRACE", value_parser = duration(field::WATCHDOG_GRACE))]
    #[serde(default, with = "duration_text")]
    pub watchdog_grace: Option<Duration>,
    /// Runs stuck past deadline + watchdog grace this worker tolerates; one more and it
    /// exits 75 to be restarted. Below --concurrency; default half of it.
    #[arg(long, env = "SLUICE_MAX_STUCK", value_parser = parsed::<usize>(field::MAX_STUCK))]
    pub max_stuck: Option<usize>,
    /// Attempts per job (only transient failures are retried), 1 to 100. Default 3.
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS", value_parser = parsed::<u32>(field::MAX_ATTEMPTS))]
    pub max_attempts: Option<u32>,
    /// How long results, completion notices and output blobs are kept, 1m to 365d.
    /// Default: results and blobs 24h, notices 1h.
    #[arg(long, env = "SLUICE_TTL", value_parser = duration(field::TTL))]
    #[serde(default, with = "duration_text")]
    pub ttl: Option<Duration>,
    /// This worker's consumer name in the queue (at most 128 visible characters).
    /// Default: host-pid.
    #[arg(long, env = "SLUICE_CONSUMER")]
    pub consumer: Option<String>,
    /// Directories granted (read-only) to every guest, HOST::GUEST (never `/`).
    #[arg(long = "dir", env = "SLUICE_DIRS", value_delimiter = ',')]
    pub dirs: Option<Vec<String>>,
    /// Address space a module's compile child may use (e.g. `2GiB`); a module that
    /// needs more is `invalid_module`. 64 MiB to 1 TiB; default 4 GiB.
    #[arg(long, env = "SLUICE_COMPILE_MEMORY", value_parser = size(field::COMPILE_MEMORY))]
    #[serde(default, with = "size_text")]
    pub compile_memory: Option<u64>,
    /// CPU time a module's compile child may use (whole seconds, over all its
    /// threads). 1s to 1h; default 120s.
    #[arg(long, env = "SLUICE_COMPILE_CPU", value_parser = duration(field::COMPILE_CPU))]
    #[serde(default, with = "duration_text")]
    pub compile_cpu: Option<Duration>,
    /// How long a module's compile may take before its child is killed. 100ms to 1h;
    /// default 60s.
    #[arg(long, env = "SLUICE_COMPILE_TIMEOUT", value_parser = duration(field::COMPILE_TIMEOUT))]
    #[serde(default, with = "duration_text")]
    pub compile_timeout: Option<Duration>,
    // --- module cache settings (issue 9: the artifact cache tiers) ---
    /// Directory of the on-disk artifact cache (L2), created if missing; only this
    /// worker's user should be able to write it. Unset: no L2.
    #[arg(long, env = "SLUICE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of artifacts kept in --cache-dir (e.g. `2GiB`). Default 2GiB.
    #[arg(long, env = "SLUICE_CACHE_BYTES", value_parser = size(field::CACHE_BYTES))]
    #[serde(default, with = "size_text")]
    pub cache_bytes: Option<u64>,
    /// Most bytes of loaded modules (wasm and compiled code) kept in memory (L1).
    /// Default 512MiB.
    #[arg(long, env = "SLUICE_MODULE_CACHE_BYTES", value_parser = size(field::MODULE_CACHE_BYTES))]
    #[serde(default, with = "size_text")]
    pub module_cache_bytes: Option<u64>,
    /// Most loaded modules kept in memory (L1), 1 to 100000. Default 256.
    #[arg(long, env = "SLUICE_MODULE_CACHE_COUNT", value_parser = parsed::<usize>(field::MODULE_CACHE_COUNT))]
    pub module_cache_count: Option<usize>,
    /// File holding the fleet's cache key (at least 16 bytes), which tags every cached
    /// artifact; with a key, artifacts are shared through Redis (L3). The key itself
    /// may be given in SLUICE_CACHE_KEY instead (never as a flag or in the file).
    /// Without either, a random per-process key tags L2 only.
    #[arg(long, env = "SLUICE_CACHE_KEY_FILE")]
    pub cache_key_file: Option<PathBuf>,
    /// How long a compiled artifact stays in Redis (L3) after it was last stored or
    /// used, never longer than its module, 1m to 365d. Default 7d.
    #[arg(long, env = "SLUICE_CACHE_TTL", value_parser = duration(field::CACHE_TTL))]
    #[serde(default, with = "duration_text")]
    pub cache_ttl: Option<Duration>,
    // --- end of module cache settings ---
    /// A TOML file with any of the settings above.
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// One setting, as it is spelled on the command line, in the environment and in the
/// config file: an error names all three, since the operator may have used any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The flag, e.g. `--lease`.
    pub flag: &'static str,
    /// The environment variable, e.g. `SLUICE_LEASE`.
    pub env: &'static str,
    /// The config file key, e.g. `lease`.
    pub key: &'static str,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, config key `{}`)", self.flag, self.env, self.key)
    }
}

macro_rules! fields {
    ($($(#[$doc:meta])* $name:ident: $flag:literal, $env:literal, $key:literal;)*) => {
        /// Every `serve` setting (all but `--config` itself).
        pub mod field {
            use super::Field;
            $($(#[$doc])* pub const $name: Field = Field { flag: $flag, env: $env, key: $key };)*
            /// All of them, in the order of [`FleetArgs`](super::FleetArgs).
            pub const ALL: &[Field] = &[$($name),*];
        }
    };
}

fields! {
    /// The Redis URL.
    REDIS: "--redis", "SLUICE_REDIS_URL", "redis";
    /// The queue name.
    QUEUE: "--queue", "SLUICE_QUEUE", "queue";
    /// The Redis server's CA certificate file.
    REDIS_CA: "--redis-ca", "SLUICE_REDIS_CA", "redis_ca";
    /// Whether the Redis URL names a cluster.
    REDIS_CLUSTER: "--redis-cluster", "SLUICE_REDIS_CLUSTER", "redis_cluster";
    /// Job slots.
    CONCURRENCY: "--concurrency", "SLUICE_CONCURRENCY", "concurrency";
    /// Threads for the async side.
    ASYNC_THREADS: "--async-threads", "SLUICE_ASYNC_THREADS", "async_threads";
    /// The /metrics address.
    METRICS_ADDR: "--metrics-addr", "SLUICE_METRICS_ADDR", "metrics_addr";
    /// Tenants named in the per-tenant metrics.
    METRICS_MAX_TENANTS: "--metrics-max-tenants", "SLUICE_METRICS_MAX_TENANTS", "metrics_max_tenants";
    /// The lease (visibility timeout).
    LEASE: "--lease", "SLUICE_LEASE", "lease";
    /// The SIGTERM grace.
    GRACE: "--grace", "SLUICE_GRACE", "grace";
    /// The watchdog grace past a run's deadline.
    WATCHDOG_GRACE: "--watchdog-grace", "SLUICE_WATCHDOG_GRACE", "watchdog_grace";
    /// Stuck runs tolerated.
    MAX_STUCK: "--max-stuck", "SLUICE_MAX_STUCK", "max_stuck";
    /// Attempts per job.
    MAX_ATTEMPTS: "--max-attempts", "SLUICE_MAX_ATTEMPTS", "max_attempts";
    /// Result, notice and blob TTL.
    TTL: "--ttl", "SLUICE_TTL", "ttl";
    /// The consumer name.
    CONSUMER: "--consumer", "SLUICE_CONSUMER", "consumer";
    /// Directory grants.
    DIRS: "--dir", "SLUICE_DIRS", "dirs";
    /// The compile child's address-space limit.
    COMPILE_MEMORY: "--compile-memory", "SLUICE_COMPILE_MEMORY", "compile_memory";
    /// The compile child's CPU limit.
    COMPILE_CPU: "--compile-cpu", "SLUICE_COMPILE_CPU", "compile_cpu";
    /// The compile's wall-clock limit.
    COMPILE_TIMEOUT: "--compile-timeout", "SLUICE_COMPILE_TIMEOUT", "compile_timeout";
    /// The on-disk artifact cache directory (L2).
    CACHE_DIR: "--cache-dir", "SLUICE_CACHE_DIR", "cache_dir";
    /// The on-disk artifact cache's byte bound.
    CACHE_BYTES: "--cache-bytes", "SLUICE_CACHE_BYTES", "cache_bytes";
    /// The in-memory module cache's byte bound (L1).
    MODULE_CACHE_BYTES: "--module-cache-bytes", "SLUICE_MODULE_CACHE_BYTES", "module_cache_bytes";
    /// The in-memory module cache's count bound (L1).
    MODULE_CACHE_COUNT: "--module-cache-count", "SLUICE_MODULE_CACHE_COUNT", "module_cache_count";
    /// The file holding the fleet's cache key.
    CACHE_KEY_FILE: "--cache-key-file", "SLUICE_CACHE_KEY_FILE", "cache_key_file";
    /// How long an artifact stays in Redis after its last use (L3).
    CACHE_TTL: "--cache-ttl", "SLUICE_CACHE_TTL", "cache_ttl";
}

/// The environment variable that may hold the fleet's cache key itself (read only
/// when `--cache-key-file` is unset; never a flag or a config key, so it does not show
/// in process listings or config files).
pub const CACHE_KEY_ENV: &str = "SLUICE_CACHE_KEY";

/// A flag or variable read as `T` (its `FromStr`), the setting named in an error.
fn parsed<T>(field: Field) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    move |text| text.parse().map_err(|e| format!("{e}; {field}"))
}

/// A flag or variable read as a duration by [`parse_duration`], the setting named in
/// an error.
fn duration(
    field: Field,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| parse_duration(text).map_err(|e| format!("{e}; {field}"))
}

/// A flag or variable read as a byte size by [`parse_size`], the setting named in an
/// error.
fn size(field: Field) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| parse_size(text).map_err(|e| format!("{e}; {field}"))
}

/// Byte sizes in the config file: a number of bytes or a string with a unit (`2GiB`),
/// read by [`parse_size`] as the flags are; written (for the merge) as a number.
mod size_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use sluice_shared::units::parse_size;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(bytes) => s.serialize_u64(*bytes),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Size::deserialize(d)? {
            Size::Bytes(bytes) => Ok(Some(bytes)),
            Size::Text(text) => parse_size(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Durations in the config file: read by [`parse_duration`], as the flags are, and
/// written (for the merge) as whole seconds plus nanoseconds, which it reads back
/// exactly.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};
    use sluice_shared::units::parse_duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(d) if d.subsec_nanos() == 0 => s.serialize_str(&format!("{}s", d.as_secs())),
            Some(d) => s.serialize_str(&format!("{}s {}ns", d.as_secs(), d.subsec_nanos())),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is out of bounds or malformed.
    #[error("{field}: {problem}")]
    Invalid {
        /// The setting.
        field: Field,
        /// What is wrong with its value.
        problem: String,
    },
    /// The config file cannot be read or is not valid TOML for these settings.
    #[error("config file {path}: {reason}")]
    File {
        /// The file as given.
        path: PathBuf,
        /// What is wrong, naming the key where there is one.
        reason: String,
    },
}

fn invalid(field: Field, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// The bounds `serve` settings are held to.
pub mod limits {
    use std::time::Duration;

    /// Most job slots: each reserves address space in two pooling allocators (a guest
    /// memory's 4 GiB reservation per engine), and claims are sized to free slots.
    pub const MAX_CONCURRENCY: usize = 1024;
    /// Job slots per core when `--concurrency` is unset: guests mostly wait on I/O.
    pub const SLOTS_PER_CORE: usize = 4;
    /// Most threads for the async side (`--async-threads`).
    pub const MAX_ASYNC_THREADS: usize = 64;
    /// Shortest lease: renewals go every third of it, so shorter would spend Redis round
    /// trips on renewing and hand jobs over on any pause.
    pub const MIN_LEASE: Duration = Duration::from_secs(1);
    /// Longest lease: a dead worker's jobs wait this long to be taken over.
    pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
    /// Longest SIGTERM grace (0 releases at once).
    pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);
    /// Shortest watchdog grace.
    pub const MIN_WATCHDOG_GRACE: Duration = Duration::from_millis(1);
    /// Longest watchdog grace.
    pub const MAX_WATCHDOG_GRACE: Duration = Duration::from_secs(3600);
    /// Most attempts per job.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Shortest TTL of results, notices and blobs.
    pub const MIN_TTL: Duration = Duration::from_secs(60);
    /// Longest TTL of results, notices and blobs.
    pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Longest consumer name.
    pub const MAX_CONSUMER_NAME: usize = 128;
    /// Most loaded modules held in memory.
    pub const MAX_MODULE_CACHE_COUNT: usize = 100_000;
    /// Most tenants named in the per-tenant metrics (each is 17 series).
    pub const MAX_METRICS_TENANTS: usize = 1000;
}

/// Validated `serve` settings, defaults applied: what [`serve`](super::serve) runs on.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The Redis URL (its scheme checked; it may hold a password).
    pub redis_url: String,
    /// The queue name; `None` for the protocol's default queue.
    pub queue: Option<String>,
    /// The CA certificate(s) of `--redis-ca`, read.
    pub redis_ca_pem: Option<Vec<u8>>,
    /// Whether the Redis URL names a Redis Cluster (`--redis-cluster`).
    pub redis_cluster: bool,
    /// Job slots, 1 to [`limits::MAX_CONCURRENCY`].
    pub slots: usize,
    /// Threads of the async side's runtime, 1 to [`limits::MAX_ASYNC_THREADS`]
    /// ([`runtime`](super::runtime): 1 is a current-thread runtime).
    pub async_threads: usize,
    /// Where to serve /metrics, /healthz and /readyz, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Tenants named in the per-tenant metrics (the rest are `other`).
    pub metrics_max_tenants: usize,
    /// The lease a claim takes, renewed every third of it.
    pub lease: Duration,
    /// After SIGTERM, how long jobs in flight may take before they are released.
    pub grace: Duration,
    /// How long a run may go past its deadline before the watchdog gives it up.
    pub watchdog_grace: Duration,
    /// Stuck runs tolerated, below `slots`.
    pub max_stuck: usize,
    /// Attempts per job.
    pub max_attempts: u32,
    /// One TTL for results, notices (at most their default) and blobs; `None` keeps
    /// the protocol's defaults.
    pub ttl: Option<Duration>,
    /// The consumer name; `None` names the worker after its host and process id.
    pub consumer: Option<String>,
    /// Directories granted read-only to every guest.
    pub dir_grants: Vec<DirGrant>,
    /// The limits every module compile runs under (its child process).
    pub compile: CompileLimits,
    /// The module cache (L1 bounds, L2 directory and bound, the fleet's key).
    pub cache: CacheConfig,
}

impl FleetArgs {
    /// Fills every setting the command line and environment left unset from the
    /// `--config` file (without one, returns the settings as they are).
    pub fn merged(self) -> Result<Self, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file_error = |reason: String| ConfigError::File {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
        // Read as the settings first: a wrong type or an unknown key is named with its
        // line.
        let file: FleetArgs =
            toml::from_str(&text).map_err(|e| file_error(toml_reason(&text, &e)))?;
        let mut merged = overlay(&self, &file)
            .map_err(|e| file_error(format!("merging with the flags and environment: {e}")))?;
        merged.config = self.config;
        Ok(merged)
    }

    /// Merges the config file, applies the defaults and checks every setting; the
    /// first bad one is named.
    pub fn load(self) -> Result<FleetConfig, ConfigError> {
        let args = self.merged()?;
        let defaults = ExecutorConfig::default();
        let cache = cache_config(&args)?;
        let redis_url = args.redis_url.ok_or_else(|| {
            invalid(
                field::REDIS,
                "no Redis configured (e.g. redis://127.0.0.1:6379)",
            )
        })?;
        check_redis_url(&redis_url)?;
        if let Some(queue) = &args.queue {
            check_queue(queue)?;
        }
        let redis_ca_pem = args
            .redis_ca
            .as_ref()
            .map(|path| {
                std::fs::read(path)
                    .map_err(|e| invalid(field::REDIS_CA, format!("{}: {e}", path.display())))
            })
            .transpose()?;

        let slots = match args.concurrency {
            Some(0) => return Err(invalid(field::CONCURRENCY, "must be at least 1, got 0")),
            Some(n) if n > limits::MAX_CONCURRENCY => {
                return Err(invalid(
                    field::CONCURRENCY,
                    format!(
                        "at most {} (sandbox pool slots), got {n}",
                        limits::MAX_CONCURRENCY
                    ),
                ));
            }
            Some(n) => n,
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores * limits::SLOTS_PER_CORE).min(limits::MAX_CONCURRENCY)
            }
        };
        let async_threads = args.async_threads.unwrap_or(1);
        if !(1..=limits::MAX_ASYNC_THREADS).contains(&async_threads) {
            return Err(invalid(
                field::ASYNC_THREADS,
                format!(
                    "must be 1 to {}, got {async_threads}",
                    limits::MAX_ASYNC_THREADS
                ),
            ));
        }
        let max_stuck = match args.max_stuck {
            Some(n) if n >= slots => {
                return Err(invalid(
                    field::MAX_STUCK,
                    format!(
                        "must be below --concurrency ({slots}), got {n}: a worker whose every \
                         slot is stuck would stay up doing nothing"
                    ),
                ));
            }
            Some(n) => n,
            None => ExecutorConfig {
                slots,
                ..defaults.clone()
            }
            .stuck_bound(),
        };

        let metrics_max_tenants = args
            .metrics_max_tenants
            .unwrap_or(crate::metrics::DEFAULT_MAX_TENANTS);
        if metrics_max_tenants > limits::MAX_METRICS_TENANTS {
            return Err(invalid(
                field::METRICS_MAX_TENANTS,
                format!(
                    "at most {}, got {metrics_max_tenants}",
                    limits::MAX_METRICS_TENANTS
                ),
            ));
        }

        let lease = args.lease.unwrap_or(defaults.lease);
        within(field::LEASE, lease, limits::MIN_LEASE, limits::MAX_LEASE)?;
        let grace = args.grace.unwrap_or(defaults.grace);
        within(field::GRACE, grace, Duration::ZERO, limits::MAX_GRACE)?;
        let watchdog_grace = args.watchdog_grace.unwrap_or(defaults.watchdog_grace);
        within(
            field::WATCHDOG_GRACE,
            watchdog_grace,
            limits::MIN_WATCHDOG_GRACE,
            limits::MAX_WATCHDOG_GRACE,
        )?;
        if let Some(ttl) = args.ttl {
            within(field::TTL, ttl, limits::MIN_TTL, limits::MAX_TTL)?;
        }

        let max_attempts = args.max_attempts.unwrap_or(defaults.retry.max_attempts);
        if !(1..=limits::MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(invalid(
                field::MAX_ATTEMPTS,
                format!("must be 1 to {}, got {max_attempts}", limits::MAX_ATTEMPTS),
            ));
        }

        let compile = compile_limits(args.compile_memory, args.compile_cpu, args.compile_timeout)?;
        if let Some(consumer) = &args.consumer {
            check_name(field::CONSUMER, consumer, limits::MAX_CONSUMER_NAME, |c| {
                c.is_ascii_graphic()
            })?;
        }
        let dir_grants = args
            .dirs
            .unwrap_or_default()
            .iter()
            .map(|spec| {
                DirGrant::parse(spec, true).map_err(|e| invalid(field::DIRS, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(FleetConfig {
            compile,
            redis_url,
            queue: args.queue,
            redis_ca_pem,
            redis_cluster: args.redis_cluster.unwrap_or(false),
            slots,
            async_threads,
            metrics_addr: args.metrics_addr,
            metrics_max_tenants,
            lease,
            grace,
            watchdog_grace,
            max_stuck,
            max_attempts,
            ttl: args.ttl,
            consumer: args.consumer,
            dir_grants,
            cache,
        })
    }
}

/// The compile limits: [`CompileLimits`]'s defaults where unset, each value checked
/// against its bounds and named by its setting.
fn compile_limits(
    memory: Option<u64>,
    cpu: Option<Duration>,
    timeout: Option<Duration>,
) -> Result<CompileLimits, ConfigError> {
    let defaults = CompileLimits::default();
    let memory_bytes = memory.unwrap_or(defaults.memory_bytes);
    if !(CompileLimits::MIN_MEMORY_BYTES..=CompileLimits::MAX_MEMORY_BYTES).contains(&memory_bytes)
    {
        return Err(invalid(
            field::COMPILE_MEMORY,
            format!("must be 64 MiB to 1 TiB, got {memory_bytes} bytes"),
        ));
    }
    let cpu = cpu.unwrap_or(defaults.cpu);
    within(
        field::COMPILE_CPU,
        cpu,
        CompileLimits::MIN_CPU,
        CompileLimits::MAX_CPU,
    )?;
    let wall_clock = timeout.unwrap_or(defaults.wall_clock);
    within(
        field::COMPILE_TIMEOUT,
        wall_clock,
        CompileLimits::MIN_WALL_CLOCK,
        CompileLimits::MAX_WALL_CLOCK,
    )?;
    let limits = CompileLimits {
        memory_bytes,
        cpu,
        wall_clock,
        ..defaults
    };
    // Every field is checked above; this keeps the two in step.
    limits
        .validate()
        .map_err(|e| invalid(field::COMPILE_MEMORY, e.to_string()))?;
    Ok(limits)
}

// --- module cache settings (issue 9) ---

/// The module cache's settings, checked; the key read from `--cache-key-file` or, when
/// that is unset, from [`CACHE_KEY_ENV`].
fn cache_config(args: &FleetArgs) -> Result<CacheConfig, ConfigError> {
    let defaults = CacheConfig::default();
    let l1_count = args.module_cache_count.unwrap_or(defaults.l1_count);
    if !(1..=limits::MAX_MODULE_CACHE_COUNT).contains(&l1_count) {
        return Err(invalid(
            field::MODULE_CACHE_COUNT,
            format!(
                "must be 1 to {}, got {l1_count}",
                limits::MAX_MODULE_CACHE_COUNT
            ),
        ));
    }
    let l1_bytes = args.module_cache_bytes.unwrap_or(defaults.l1_bytes);
    if l1_bytes == 0 {
        return Err(invalid(field::MODULE_CACHE_BYTES, "must be above 0"));
    }
    let dir_bytes = args.cache_bytes.unwrap_or(defaults.dir_bytes);
    if dir_bytes == 0 {
        return Err(invalid(field::CACHE_BYTES, "must be above 0"));
    }
    let secret =
        match &args.cache_key_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    invalid(field::CACHE_KEY_FILE, format!("{}: {e}", path.display()))
                })?;
                Some(CacheSecret::new(&bytes).map_err(|e| {
                    invalid(field::CACHE_KEY_FILE, format!("{}: {e}", path.display()))
                })?)
            }
            None => match std::env::var_os(CACHE_KEY_ENV) {
                Some(key) => Some(CacheSecret::new(key.as_encoded_bytes()).map_err(|e| {
                    invalid(field::CACHE_KEY_FILE, format!("{CACHE_KEY_ENV}: {e}"))
                })?),
                None => None,
            },
        };
    let ttl = args.cache_ttl.unwrap_or(defaults.ttl);
    if !(limits::MIN_TTL..=limits::MAX_TTL).contains(&ttl) {
        return Err(invalid(
            field::CACHE_TTL,
            format!("must be 1m to 365d, got {}s", ttl.as_secs()),
        ));
    }
    Ok(CacheConfig {
        l1_bytes,
        l1_count,
        dir: args.cache_dir.clone(),
        dir_bytes,
        secret,
        ttl,
        // Checked with the compile limits; a lock lives this plus a margin.
        compile_wall_clock: args.compile_timeout.unwrap_or(defaults.compile_wall_clock),
    })
}

// --- end of module cache settings ---

/// `over` laid over `under`, setting by setting: both are written as TOML tables, in
/// which an unset setting is absent, so whatever `over` sets wins and the rest comes
/// from `under`, for every setting there is.
fn overlay(over: &FleetArgs, under: &FleetArgs) -> Result<FleetArgs, String> {
    let mut merged = toml::Table::try_from(under).map_err(|e| e.to_string())?;
    merged.extend(toml::Table::try_from(over).map_err(|e| e.to_string())?);
    merged
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

/// A TOML error on one line, naming the key whose value is wrong (the error's own
/// text quotes the line over several, and for a bad value does not name the key).
fn toml_reason(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.message().to_owned();
    };
    let line_start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => format!(
            "key `{}` (line {line_no}): {}",
            key.trim().chars().take(64).collect::<String>(),
            error.message()
        ),
        _ => format!("line {line_no}: {}", error.message()),
    }
}

fn within(field: Field, value: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if value < min || value > max {
        let shown = |d: Duration| format!("{d:?}");
        let floor = if min.is_zero() {
            String::new()
        } else {
            format!("at least {} and ", shown(min))
        };
        return Err(invalid(
            field,
            format!(
                "must be {floor}at most {}, got {}",
                shown(max),
                shown(value)
            ),
        ));
    }
    Ok(())
}

/// A URL's scheme only (each seed's, for a cluster's comma-separated list): the rest
/// may hold a password, which never goes in an error.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    for seed in sluice_shared::queue::redis::seed_urls(url) {
        let rest = SCHEMES.iter().find_map(|scheme| seed.strip_prefix(scheme));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.chars().any(char::is_whitespace) => {}
            Some(_) => return Err(invalid(field::REDIS, "the URL names no host")),
            None => {
                return Err(invalid(
                    field::REDIS,
                    "must start with redis://, rediss://, redis+unix:// or unix://",
                ));
            }
        }
    }
    Ok(())
}

/// A queue name goes inside every key's hash tag `{name}`: the protocol's one rule
/// (`sluice_shared::queue::redis::validate_queue_name`), named here as the flag,
/// variable and key.
fn check_queue(queue: &str) -> Result<(), ConfigError> {
    sluice_shared::queue::redis::validate_queue_name(queue)
        .map_err(|e| invalid(field::QUEUE, e.to_string()))
}

fn check_name(
    field: Field,
    name: &str,
    max: usize,
    allowed: impl Fn(&char) -> bool,
) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(
            field,
            format!("at most {max} bytes, got {}", name.len()),
        ));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(c)) {
        return Err(invalid(field, format!("{bad:?} is not allowed in a name")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FleetArgs,
    }

    /// Settings as `sluice-worker serve` would read these flags (and the environment).
    fn flags(flags: &[&str]) -> Result<FleetArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .map(|cli| cli.args)
    }

    fn args() -> FleetArgs {
        FleetArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            concurrency: Some(4),
            consumer: Some("w1".into()),
            ..FleetArgs::default()
        }
    }

    fn refused(args: FleetArgs) -> (Field, String) {
        match args.load() {
            Err(ConfigError::Invalid { field, problem }) => (field, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn defaults_are_valid() {
        let config = args().load().unwrap();
        assert_eq!(config.lease, Duration::from_secs(30));
        assert_eq!(
            config.watchdog_grace,
            ExecutorConfig::DEFAULT_WATCHDOG_GRACE
        );
        assert_eq!(config.max_stuck, 2);
        assert_eq!(config.max_attempts, 3);
        let unset = FleetArgs {
            concurrency: None,
            ..args()
        };
        let config = unset.load().unwrap();
        assert!((1..=limits::MAX_CONCURRENCY).contains(&config.slots));
        assert!(config.max_stuck < config.slots);
    }

    #[test]
    fn one_server_by_default_and_a_clusters_seed_list_when_asked() {
        assert!(!args().load().unwrap().redis_cluster);
        let cluster = FleetArgs {
            redis_url: Some("redis://a:1,redis://b:2".into()),
            redis_cluster: Some(true),
            ..args()
        }
        .load()
        .unwrap();
        assert!(cluster.redis_cluster);
        assert_eq!(cluster.redis_url, "redis://a:1,redis://b:2");
    }

    #[test]
    fn defaults_are_the_executors() {
        let config = args().load().unwrap();
        let executor = ExecutorConfig::default();
        assert_eq!(config.lease, executor.lease);
        assert_eq!(config.grace, executor.grace);
        assert_eq!(config.watchdog_grace, executor.watchdog_grace);
        assert_eq!(config.max_attempts, executor.retry.max_attempts);
        assert_eq!(config.compile, CompileLimits::default());
        let bound = ExecutorConfig {
            slots: config.slots,
            ..executor
        }
        .stuck_bound();
        assert_eq!(config.max_stuck, bound);
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let cases: Vec<(FleetArgs, Field)> = vec![
            (
                FleetArgs {
                    lease: secs(0),
                    ..args()
                },
                field::LEASE,
            ),
            (
                FleetArgs {
                    lease: Some(Duration::from_millis(10)),
                    ..args()
                },
                field::LEASE,
            ),
            (
                FleetArgs {
                    grace: secs(400 * 24 * 3600),
                    ..args()
                },
                field::GRACE,
            ),
            (
                FleetArgs {
                    watchdog_grace: secs(0),
                    ..args()
                },
                field::WATCHDOG_GRACE,
            ),
            (
                FleetArgs {
                    concurrency: Some(0),
                    ..args()
                },
                field::CONCURRENCY,
            ),
            (
                FleetArgs {
                    concurrency: Some(100_000),
                    ..args()
                },
                field::CONCURRENCY,
            ),
            (
                FleetArgs {
                    async_threads: Some(0),
                    ..args()
                },
                field::ASYNC_THREADS,
            ),
            (
                FleetArgs {
                    async_threads: Some(65),
                    ..args()
                },
                field::ASYNC_THREADS,
            ),
            (
                FleetArgs {
                    max_stuck: Some(4),
                    ..args()
                },
                field::MAX_STUCK,
            ),
            (
                FleetArgs {
                    max_attempts: Some(0),
                    ..args()
                },
                field::MAX_ATTEMPTS,
            ),
            (
                FleetArgs {
                    max_attempts: Some(1000),
                    ..args()
                },
                field::MAX_ATTEMPTS,
            ),
            (
                FleetArgs {
                    ttl: secs(0),
                    ..args()
                },
                field::TTL,
            ),
            (
                FleetArgs {
                    compile_memory: Some(1 << 20),
                    ..args()
                },
                field::COMPILE_MEMORY,
            ),
            (
                FleetArgs {
                    compile_cpu: Some(Duration::from_millis(10)),
                    ..args()
                },
                field::COMPILE_CPU,
            ),
            (
                FleetArgs {
                    compile_timeout: secs(7200),
                    ..args()
                },
                field::COMPILE_TIMEOUT,
            ),
            (
                FleetArgs {
                    ttl: secs(1000 * 365 * 24 * 3600),
                    ..args()
                },
                field::TTL,
            ),
            (
                FleetArgs {
                    queue: Some("a{b}".into()),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                FleetArgs {
                    queue: Some(String::new()),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                FleetArgs {
                    queue: Some("q".repeat(65)),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                FleetArgs {
                    consumer: Some("a b".into()),
                    ..args()
                },
                field::CONSUMER,
            ),
            (
                FleetArgs {
                    redis_url: None,
                    ..args()
                },
                field::REDIS,
            ),
            (
                FleetArgs {
                    redis_url: Some("http://x".into()),
                    ..args()
                },
                field::REDIS,
            ),
            (
                // A cluster's seed list: every seed is checked.
                FleetArgs {
                    redis_url: Some("redis://a:1,http://b:2".into()),
                    redis_cluster: Some(true),
                    ..args()
                },
                field::REDIS,
            ),
            (
                FleetArgs {
                    redis_ca: Some("/no/such/ca.pem".into()),
                    ..args()
                },
                field::REDIS_CA,
            ),
            (
                FleetArgs {
                    dirs: Some(vec!["/".into()]),
                    ..args()
                },
                field::DIRS,
            ),
        ];
        for (args, expected) in cases {
            let described = format!("{args:?}");
            let (field, problem) = refused(args);
            assert_eq!(field, expected, "{described}: {problem}");
            let message = invalid(field, problem).to_string();
            for name in [field.flag, field.env, field.key] {
                assert!(message.contains(name), "{message}");
            }
        }
    }

    #[test]
    fn values_the_parser_refuses_name_their_field() {
        let cases = [
            (field::LEASE, "soon"),
            (field::GRACE, "forever"),
            (field::WATCHDOG_GRACE, "5 parsecs"),
            (field::TTL, "-1s"),
            (field::CONCURRENCY, "lots"),
            (field::MAX_STUCK, "-1"),
            (field::MAX_ATTEMPTS, "three"),
            (field::METRICS_ADDR, "nowhere"),
            (field::COMPILE_MEMORY, "lots"),
            (field::COMPILE_CPU, "a while"),
            (field::COMPILE_TIMEOUT, "-1s"),
        ];
        for (field, value) in cases {
            let error = flags(&[&format!("{}={value}", field.flag)])
                .unwrap_err()
                .to_string();
            for name in [field.flag, field.env, field.key] {
                assert!(error.contains(name), "{name} not in: {error}");
            }
        }
        // In the file, the same parser, and the key named.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "lease = \"soon\"\n").unwrap();
        let error = FleetArgs {
            config: Some(path),
            ..args()
        }
        .load()
        .unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error}");
        assert!(error.to_string().contains("`lease`"), "{error}");
    }

    #[test]
    fn durations_take_units_in_flags_and_file_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        for text in ["500ms", "2s", "1m 30s", "1h", "36h"] {
            let from_flag = flags(&["--lease", text]).unwrap().lease;
            std::fs::write(&path, format!("lease = {text:?}\n")).unwrap();
            let from_file = flags(&["--config", path.to_str().unwrap()])
                .unwrap()
                .merged()
                .unwrap()
                .lease;
            assert_eq!(from_flag, Some(parse_duration(text).unwrap()));
            assert_eq!(from_file, from_flag, "{text}");
        }
    }

    #[test]
    fn a_password_in_a_bad_url_is_not_repeated() {
        let (_, problem) = refused(FleetArgs {
            redis_url: Some("htp://user:hunter2@host".into()),
            ..args()
        });
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn the_file_fills_what_flags_left_unset_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "lease = \"0s\"\nmax_attempts = 5\n").unwrap();
        let (field, _) = refused(FleetArgs {
            config: Some(path.clone()),
            ..args()
        });
        assert_eq!(field, field::LEASE);
        let flag_wins = FleetArgs {
            config: Some(path.clone()),
            lease: secs(2),
            ..args()
        };
        let config = flag_wins.load().unwrap();
        assert_eq!(
            (config.lease, config.max_attempts),
            (Duration::from_secs(2), 5)
        );

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let error = FleetArgs {
            config: Some(path),
            ..args()
        }
        .load()
        .unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error}");
        assert!(error.to_string().contains("no_such_setting"), "{error}");
    }

    #[test]
    fn the_async_side_runs_on_one_thread_unless_told() {
        assert_eq!(args().load().unwrap().async_threads, 1);
        let four = FleetArgs {
            async_threads: Some(4),
            ..args()
        };
        assert_eq!(four.load().unwrap().async_threads, 4);
    }

    /// Every setting, set one way by flags and another by the file.
    const EVERY_FLAG: &[&str] = &[
        "--redis=redis://flag:1",
        "--queue=qflag",
        "--redis-ca=/flag/ca.pem",
        "--redis-cluster=true",
        "--concurrency=3",
        "--async-threads=2",
        "--metrics-addr=127.0.0.1:1001",
        "--metrics-max-tenants=3",
        "--lease=2s",
        "--grace=4s",
        "--watchdog-grace=6s",
        "--max-stuck=1",
        "--max-attempts=4",
        "--ttl=2m",
        "--consumer=cflag",
        "--dir=/a::/a",
        "--compile-memory=1GiB",
        "--compile-cpu=10s",
        "--compile-timeout=5s",
        "--cache-dir=/flag/cache",
        "--cache-bytes=1GiB",
        "--module-cache-bytes=64MiB",
        "--module-cache-count=10",
        "--cache-key-file=/flag/key",
        "--cache-ttl=3d",
    ];
    const EVERY_KEY: &str = r#"
        redis = "redis://file:2"
        queue = "qfile"
        redis_ca = "/file/ca.pem"
        redis_cluster = false
        concurrency = 5
        async_threads = 3
        metrics_addr = "127.0.0.1:1002"
        metrics_max_tenants = 7
        lease = "3s"
        grace = "5s"
        watchdog_grace = "7s"
        max_stuck = 2
        max_attempts = 6
        ttl = "3m"
        consumer = "cfile"
        dirs = ["/b::/b"]
        compile_memory = "2GiB"
        compile_cpu = "20s"
        compile_timeout = "15s"
        cache_dir = "/file/cache"
        cache_bytes = "2GiB"
        module_cache_bytes = 1048576
        module_cache_count = 20
        cache_key_file = "/file/key"
        cache_ttl = "2d"
    "#;

    fn table(args: &FleetArgs) -> toml::Table {
        toml::Table::try_from(args).unwrap()
    }

    #[test]
    fn the_samples_set_every_setting() {
        let keys = |args: &FleetArgs| {
            let mut keys: Vec<String> = table(args).keys().cloned().collect();
            keys.sort();
            keys
        };
        let mut all: Vec<String> = field::ALL.iter().map(|f| f.key.to_owned()).collect();
        all.sort();
        assert_eq!(keys(&flags(EVERY_FLAG).unwrap()), all);
        assert_eq!(keys(&toml::from_str(EVERY_KEY).unwrap()), all);
        // Unset is absent: an empty layer overrides nothing.
        assert!(table(&FleetArgs::default()).is_empty());
        // And each flag names one setting: the sets differ everywhere.
        let (from_flags, from_file) = (
            table(&flags(EVERY_FLAG).unwrap()),
            table(&toml::from_str(EVERY_KEY).unwrap()),
        );
        for key in &all {
            assert_ne!(from_flags[key], from_file[key], "{key}");
        }
    }

    #[test]
    fn for_every_setting_the_file_fills_an_unset_flag_and_a_flag_beats_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, EVERY_KEY).unwrap();
        let config = format!("--config={}", path.display());
        let file: FleetArgs = toml::from_str(EVERY_KEY).unwrap();
        let every_flag = table(&flags(EVERY_FLAG).unwrap());

        // No flags: every setting from the file.
        let merged = flags(&[&config]).unwrap().merged().unwrap();
        assert_eq!(
            merged,
            FleetArgs {
                config: Some(path.clone()),
                ..file.clone()
            }
        );
        // All flags: every setting from them.
        let mut all: Vec<&str> = EVERY_FLAG.to_vec();
        all.push(&config);
        let merged = flags(&all).unwrap().merged().unwrap();
        assert_eq!(table(&merged), every_flag);
        // One flag at a time: that setting from it, every other from the file.
        for (flag, field) in EVERY_FLAG.iter().zip(field::ALL) {
            assert!(flag.starts_with(&format!("{}=", field.flag)), "{flag}");
            let merged = flags(&[flag, &config]).unwrap().merged().unwrap();
            let mut expected = table(&file);
            expected.insert(field.key.to_owned(), every_flag[field.key].clone());
            assert_eq!(table(&merged), expected, "{flag}");
        }
    }

    #[test]
    fn every_field_is_spelled_as_clap_and_serde_spell_it() {
        let command = FleetArgs::augment_args(clap::Command::new("serve"));
        let settings: Vec<_> = command
            .get_arguments()
            .filter(|arg| arg.get_id() != "config")
            .collect();
        assert_eq!(settings.len(), field::ALL.len());
        for (arg, field) in settings.iter().zip(field::ALL) {
            assert_eq!(
                arg.get_long().map(|l| format!("--{l}")).as_deref(),
                Some(field.flag)
            );
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(field.env),
                "{}",
                field.flag
            );
        }
        let keys: Vec<String> = table(&flags(EVERY_FLAG).unwrap()).keys().cloned().collect();
        for field in field::ALL {
            assert!(keys.iter().any(|k| k == field.key), "{}", field.key);
        }
    }

    // --- module cache settings (issue 9) ---

    #[test]
    fn cache_settings_are_checked_and_the_key_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "too short\n").unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, "a key of at least sixteen bytes\n").unwrap();
        let cases = [
            (
                FleetArgs {
                    module_cache_count: Some(0),
                    ..args()
                },
                field::MODULE_CACHE_COUNT,
            ),
            (
                FleetArgs {
                    module_cache_bytes: Some(0),
                    ..args()
                },
                field::MODULE_CACHE_BYTES,
            ),
            (
                FleetArgs {
                    cache_bytes: Some(0),
                    ..args()
                },
                field::CACHE_BYTES,
            ),
            (
                FleetArgs {
                    cache_key_file: Some(dir.path().join("missing.key")),
                    ..args()
                },
                field::CACHE_KEY_FILE,
            ),
            (
                FleetArgs {
                    cache_key_file: Some(short),
                    ..args()
                },
                field::CACHE_KEY_FILE,
            ),
            (
                FleetArgs {
                    cache_ttl: Some(Duration::from_secs(59)),
                    ..args()
                },
                field::CACHE_TTL,
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(refused(args).0, expected);
        }
        let config = FleetArgs {
            cache_key_file: Some(good),
            cache_dir: Some(dir.path().join("cache")),
            cache_bytes: Some(1 << 30),
            ..args()
        }
        .load()
        .unwrap();
        assert_eq!(
            config.cache.secret,
            Some(CacheSecret::new(b"a key of at least sixteen bytes").unwrap())
        );
        assert_eq!(config.cache.dir, Some(dir.path().join("cache")));
        assert_eq!(config.cache.dir_bytes, 1 << 30);
        assert_eq!(config.cache.l1_count, CacheConfig::DEFAULT_L1_COUNT);
        assert_eq!(config.cache.ttl, CacheConfig::DEFAULT_TTL);
        assert_eq!(
            flags(&["--cache-ttl=2d"]).unwrap().cache_ttl,
            Some(Duration::from_secs(2 * 24 * 3600))
        );
        // A compile lock lives the compile wall-clock limit and a margin.
        let short = FleetArgs {
            compile_timeout: Some(Duration::from_secs(2)),
            ..args()
        }
        .load()
        .unwrap();
        assert_eq!(short.cache.compile_wall_clock, Duration::from_secs(2));
        // Sizes take units in flags and file alike.
        assert_eq!(
            flags(&["--cache-bytes=2GiB"]).unwrap().cache_bytes,
            Some(2 << 30)
        );
        let file: FleetArgs = toml::from_str("module_cache_bytes = \"1MiB\"").unwrap();
        assert_eq!(file.module_cache_bytes, Some(1 << 20));
    }
}
