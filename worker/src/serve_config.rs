//! `sluice-worker serve` settings: flags, `SLUICE_*` environment variables and a TOML
//! file, merged in that order of precedence and validated before anything starts, so a
//! bad value stops the worker at once with the setting named in all three spellings
//! instead of showing up later as a spinning renewal or a broken hash tag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_shared::units::parse_duration;

use crate::config::DirGrant;
use crate::executor::ExecutorConfig;

/// `serve` settings. Each flag has a `SLUICE_*` environment equivalent, and any left
/// unset is taken from `--config FILE` (TOML with the same names, `-` as `_`).
#[derive(clap::Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Redis URL: redis://[user:pass@]host:port[/db], or rediss:// for TLS.
    #[arg(long = "redis", env = "SLUICE_REDIS_URL")]
    #[serde(rename = "redis")]
    pub redis_url: Option<String>,
    /// Queue name (letters, digits, `-`, `_`, `.`; at most 64). Default `default`.
    #[arg(long, env = "SLUICE_QUEUE")]
    pub queue: Option<String>,
    /// PEM file of the CA that signed the Redis server's TLS certificate (rediss://).
    #[arg(long, env = "SLUICE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// Job slots (jobs run at once), 1 to 1024. Default: 4 per core.
    #[arg(long, env = "SLUICE_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Serve /metrics and /healthz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "SLUICE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Visibility timeout: a job whose worker stops renewing its lease for this long is
    /// taken over by another worker. 1s to 24h; default 30s.
    #[arg(long, env = "SLUICE_LEASE")]
    pub lease: Option<String>,
    /// On SIGTERM, how long jobs in flight may take before they are released. Up to
    /// 24h; default 30s.
    #[arg(long, env = "SLUICE_GRACE")]
    pub grace: Option<String>,
    /// How long a run may go past its deadline (blocked in a host call) before it is
    /// recorded as timeout and its lease is no longer renewed. Up to 1h; default 5s.
    #[arg(long, env = "SLUICE_WATCHDOG_GRACE")]
    pub watchdog_grace: Option<String>,
    /// Runs stuck past deadline + watchdog grace this worker tolerates; one more and it
    /// exits 75 to be restarted. Below --concurrency; default half of it.
    #[arg(long, env = "SLUICE_MAX_STUCK")]
    pub max_stuck: Option<usize>,
    /// Attempts per job (only transient failures are retried), 1 to 100. Default 3.
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// How long results, completion notices and output blobs are kept, 1m to 365d.
    /// Default: results and blobs 24h, notices 1h.
    #[arg(long, env = "SLUICE_TTL")]
    pub ttl: Option<String>,
    /// This worker's consumer name in the queue (at most 128 visible characters).
    /// Default: host-pid.
    #[arg(long, env = "SLUICE_CONSUMER")]
    pub consumer: Option<String>,
    /// Directories granted to every guest, HOST::GUEST (never `/`).
    #[arg(long = "dir", env = "SLUICE_DIRS", value_delimiter = ',')]
    #[serde(default)]
    pub dirs: Vec<String>,
    /// A TOML file with any of the settings above.
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// One setting, as it is spelled on the command line, in the environment and in the
/// config file: an error names all three, since the operator may have used any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub flag: &'static str,
    pub env: &'static str,
    pub key: &'static str,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, config key `{}`)", self.flag, self.env, self.key)
    }
}

macro_rules! fields {
    ($($name:ident: $flag:literal, $env:literal, $key:literal;)*) => {
        /// Every `serve` setting.
        pub mod field {
            use super::Field;
            $(pub const $name: Field = Field { flag: $flag, env: $env, key: $key };)*
        }
    };
}

fields! {
    REDIS: "--redis", "SLUICE_REDIS_URL", "redis";
    QUEUE: "--queue", "SLUICE_QUEUE", "queue";
    REDIS_CA: "--redis-ca", "SLUICE_REDIS_CA", "redis_ca";
    CONCURRENCY: "--concurrency", "SLUICE_CONCURRENCY", "concurrency";
    LEASE: "--lease", "SLUICE_LEASE", "lease";
    GRACE: "--grace", "SLUICE_GRACE", "grace";
    WATCHDOG_GRACE: "--watchdog-grace", "SLUICE_WATCHDOG_GRACE", "watchdog_grace";
    MAX_STUCK: "--max-stuck", "SLUICE_MAX_STUCK", "max_stuck";
    MAX_ATTEMPTS: "--max-attempts", "SLUICE_MAX_ATTEMPTS", "max_attempts";
    TTL: "--ttl", "SLUICE_TTL", "ttl";
    CONSUMER: "--consumer", "SLUICE_CONSUMER", "consumer";
    DIRS: "--dir", "SLUICE_DIRS", "dirs";
}

/// Why the settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {problem}")]
    Invalid { field: Field, problem: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
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
    /// Shortest lease: renewals go every third of it, so shorter would spend Redis round
    /// trips on renewing and hand jobs over on any pause.
    pub const MIN_LEASE: Duration = Duration::from_secs(1);
    /// Longest lease: a dead worker's jobs wait this long to be taken over.
    pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
    /// Longest SIGTERM grace (0 releases at once).
    pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);
    /// Longest watchdog grace.
    pub const MAX_WATCHDOG_GRACE: Duration = Duration::from_secs(3600);
    /// Most attempts per job.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Shortest and longest TTL of results, notices and blobs.
    pub const MIN_TTL: Duration = Duration::from_secs(60);
    pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Longest consumer name.
    pub const MAX_CONSUMER_NAME: usize = 128;
}

/// Validated `serve` settings.
#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub redis_url: String,
    pub queue: Option<String>,
    /// The CA certificate(s), read.
    pub redis_ca_pem: Option<Vec<u8>>,
    pub slots: usize,
    pub metrics_addr: Option<SocketAddr>,
    pub lease: Duration,
    pub grace: Duration,
    pub watchdog_grace: Duration,
    pub max_stuck: usize,
    pub max_attempts: u32,
    pub ttl: Option<Duration>,
    pub consumer: String,
    pub dir_grants: Vec<DirGrant>,
}

impl ServeArgs {
    /// Fills every setting the command line and environment left unset from the file.
    pub fn merged(mut self) -> Result<Self, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file: ServeArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: toml_reason(&text, &e),
        })?;
        self.redis_url = self.redis_url.or(file.redis_url);
        self.queue = self.queue.or(file.queue);
        self.concurrency = self.concurrency.or(file.concurrency);
        self.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        self.lease = self.lease.or(file.lease);
        self.grace = self.grace.or(file.grace);
        self.watchdog_grace = self.watchdog_grace.or(file.watchdog_grace);
        self.max_stuck = self.max_stuck.or(file.max_stuck);
        self.max_attempts = self.max_attempts.or(file.max_attempts);
        self.consumer = self.consumer.or(file.consumer);
        self.ttl = self.ttl.or(file.ttl);
        self.redis_ca = self.redis_ca.or(file.redis_ca);
        if self.dirs.is_empty() {
            self.dirs = file.dirs;
        }
        Ok(self)
    }

    /// Merges the config file and checks every setting; the first bad one is named.
    pub fn validate(self) -> Result<ServeSettings, ConfigError> {
        let args = self.merged()?;
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

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
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
            None => (cores * 4).min(limits::MAX_CONCURRENCY),
        };
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
            None => slots / 2,
        };

        let lease = duration(field::LEASE, &args.lease, Duration::from_secs(30))?;
        within(field::LEASE, lease, limits::MIN_LEASE, limits::MAX_LEASE)?;
        let grace = duration(field::GRACE, &args.grace, Duration::from_secs(30))?;
        within(field::GRACE, grace, Duration::ZERO, limits::MAX_GRACE)?;
        let watchdog_grace = duration(
            field::WATCHDOG_GRACE,
            &args.watchdog_grace,
            ExecutorConfig::DEFAULT_WATCHDOG_GRACE,
        )?;
        within(
            field::WATCHDOG_GRACE,
            watchdog_grace,
            Duration::from_millis(1),
            limits::MAX_WATCHDOG_GRACE,
        )?;
        let ttl = args
            .ttl
            .as_ref()
            .map(|v| {
                let ttl = parse(field::TTL, v)?;
                within(field::TTL, ttl, limits::MIN_TTL, limits::MAX_TTL)?;
                Ok::<_, ConfigError>(ttl)
            })
            .transpose()?;

        let max_attempts = args.max_attempts.unwrap_or(3);
        if !(1..=limits::MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(invalid(
                field::MAX_ATTEMPTS,
                format!("must be 1 to {}, got {max_attempts}", limits::MAX_ATTEMPTS),
            ));
        }

        let consumer = match args.consumer {
            Some(consumer) => {
                check_name(field::CONSUMER, &consumer, limits::MAX_CONSUMER_NAME, |c| {
                    c.is_ascii_graphic()
                })?;
                consumer
            }
            None => {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                let host: String = host
                    .trim()
                    .chars()
                    .filter(char::is_ascii_graphic)
                    .take(64)
                    .collect();
                format!("{host}-{}", std::process::id())
            }
        };
        let dir_grants = args
            .dirs
            .iter()
            .map(|spec| {
                DirGrant::parse(spec, true).map_err(|e| invalid(field::DIRS, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(ServeSettings {
            redis_url,
            queue: args.queue,
            redis_ca_pem,
            slots,
            metrics_addr: args.metrics_addr,
            lease,
            grace,
            watchdog_grace,
            max_stuck,
            max_attempts,
            ttl,
            consumer,
            dir_grants,
        })
    }
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

fn parse(field: Field, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|e| invalid(field, e.to_string()))
}

fn duration(
    field: Field,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    value.as_deref().map_or(Ok(default), |v| parse(field, v))
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

/// A URL's scheme only: the rest may hold a password, which never goes in an error.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    let rest = SCHEMES.iter().find_map(|scheme| url.strip_prefix(scheme));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.chars().any(char::is_whitespace) => Ok(()),
        Some(_) => Err(invalid(field::REDIS, "the URL names no host")),
        None => Err(invalid(
            field::REDIS,
            "must start with redis://, rediss://, redis+unix:// or unix://",
        )),
    }
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

    fn args() -> ServeArgs {
        ServeArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            concurrency: Some(4),
            consumer: Some("w1".into()),
            ..ServeArgs::default()
        }
    }

    fn refused(args: ServeArgs) -> (Field, String) {
        match args.validate() {
            Err(ConfigError::Invalid { field, problem }) => (field, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let settings = args().validate().unwrap();
        assert_eq!(settings.lease, Duration::from_secs(30));
        assert_eq!(
            settings.watchdog_grace,
            ExecutorConfig::DEFAULT_WATCHDOG_GRACE
        );
        assert_eq!(settings.max_stuck, 2);
        assert_eq!(settings.max_attempts, 3);
        let unset = ServeArgs {
            concurrency: None,
            ..args()
        };
        let settings = unset.validate().unwrap();
        assert!((1..=limits::MAX_CONCURRENCY).contains(&settings.slots));
        assert!(settings.max_stuck < settings.slots);
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let cases: Vec<(ServeArgs, Field)> = vec![
            (
                ServeArgs {
                    lease: Some("0s".into()),
                    ..args()
                },
                field::LEASE,
            ),
            (
                ServeArgs {
                    lease: Some("10ms".into()),
                    ..args()
                },
                field::LEASE,
            ),
            (
                ServeArgs {
                    lease: Some("soon".into()),
                    ..args()
                },
                field::LEASE,
            ),
            (
                ServeArgs {
                    grace: Some("400d".into()),
                    ..args()
                },
                field::GRACE,
            ),
            (
                ServeArgs {
                    watchdog_grace: Some("0s".into()),
                    ..args()
                },
                field::WATCHDOG_GRACE,
            ),
            (
                ServeArgs {
                    concurrency: Some(0),
                    ..args()
                },
                field::CONCURRENCY,
            ),
            (
                ServeArgs {
                    concurrency: Some(100_000),
                    ..args()
                },
                field::CONCURRENCY,
            ),
            (
                ServeArgs {
                    max_stuck: Some(4),
                    ..args()
                },
                field::MAX_STUCK,
            ),
            (
                ServeArgs {
                    max_attempts: Some(0),
                    ..args()
                },
                field::MAX_ATTEMPTS,
            ),
            (
                ServeArgs {
                    max_attempts: Some(1000),
                    ..args()
                },
                field::MAX_ATTEMPTS,
            ),
            (
                ServeArgs {
                    ttl: Some("0s".into()),
                    ..args()
                },
                field::TTL,
            ),
            (
                ServeArgs {
                    ttl: Some("1000y".into()),
                    ..args()
                },
                field::TTL,
            ),
            (
                ServeArgs {
                    queue: Some("a{b}".into()),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                ServeArgs {
                    queue: Some(String::new()),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                ServeArgs {
                    queue: Some("q".repeat(65)),
                    ..args()
                },
                field::QUEUE,
            ),
            (
                ServeArgs {
                    consumer: Some("a b".into()),
                    ..args()
                },
                field::CONSUMER,
            ),
            (
                ServeArgs {
                    redis_url: None,
                    ..args()
                },
                field::REDIS,
            ),
            (
                ServeArgs {
                    redis_url: Some("http://x".into()),
                    ..args()
                },
                field::REDIS,
            ),
            (
                ServeArgs {
                    redis_ca: Some("/no/such/ca.pem".into()),
                    ..args()
                },
                field::REDIS_CA,
            ),
            (
                ServeArgs {
                    dirs: vec!["/".into()],
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
    fn a_password_in_a_bad_url_is_not_repeated() {
        let (_, problem) = refused(ServeArgs {
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
        let (field, _) = refused(ServeArgs {
            config: Some(path.clone()),
            ..args()
        });
        assert_eq!(field, field::LEASE);
        let flag_wins = ServeArgs {
            config: Some(path.clone()),
            lease: Some("2s".into()),
            ..args()
        };
        let settings = flag_wins.validate().unwrap();
        assert_eq!(
            (settings.lease, settings.max_attempts),
            (Duration::from_secs(2), 5)
        );

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let error = ServeArgs {
            config: Some(path),
            ..args()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(error, ConfigError::File { .. }), "{error}");
        assert!(error.to_string().contains("no_such_setting"), "{error}");
    }
}
