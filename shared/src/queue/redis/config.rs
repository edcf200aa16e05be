//! How to reach Redis and how long things are kept ([`RedisConfig`]), checked before
//! anything connects: a queue name is part of every key and of the hash tag that keeps a
//! queue on one Cluster slot, so it must not contain `{`/`}` (which would move the tag)
//! nor anything a shell or a log line would mangle; sizes and durations must be usable.

use std::time::Duration;

/// How to reach Redis and how long things are kept. Its `Debug` shows the URL
/// redacted ([`redacted_url`]).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS. With
    /// [`Topology::Cluster`], one or more seed nodes of the cluster, comma-separated
    /// (`redis://a:7000,redis://b:7000`; every seed with the same credentials and scheme).
    pub url: String,
    /// Whether the URL names one Redis server (the default) or a Redis Cluster.
    pub topology: Topology,
    /// The queue's name; its keys are `sluice:{name}:…`.
    pub queue: String,
    /// How long results are kept.
    pub result_ttl: Duration,
    /// How long completion notices are kept (submitters follow them).
    pub notice_ttl: Duration,
    /// How long dead letters are kept (trimmed by age, never by count).
    pub dead_ttl: Duration,
    /// How long input and output blobs are kept.
    pub blob_ttl: Duration,
    /// Inputs and outputs up to this size travel inline; larger ones are chunked blobs.
    pub inline_limit: usize,
    /// Blob chunk size.
    pub chunk_bytes: usize,
    /// How often a claimer promotes due delayed jobs and takes over expired leases.
    pub maintenance_interval: Duration,
    /// Most completions sent in one script call.
    pub completion_batch: usize,
    /// Time allowed for a (non-blocking) command's reply.
    pub response_timeout: Duration,
    /// PEM certificate(s) of the CA that signed the server's TLS certificate, for a
    /// `rediss://` URL whose server is not signed by a public CA.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl RedisConfig {
    /// Defaults for `url`: queue `default`, results and blobs kept a day, dead letters a
    /// week, 256 KiB inline limit, 1 MiB chunks.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            topology: Topology::Single,
            queue: "default".into(),
            result_ttl: Duration::from_secs(24 * 3600),
            notice_ttl: Duration::from_secs(3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            blob_ttl: Duration::from_secs(24 * 3600),
            inline_limit: 256 << 10,
            chunk_bytes: 1 << 20,
            maintenance_interval: Duration::from_millis(100),
            completion_batch: 256,
            response_timeout: Duration::from_secs(10),
            tls_ca_pem: None,
        }
    }
}

/// What kind of Redis deployment [`RedisConfig::url`] names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server (or a primary behind a proxy or Sentinel-managed address): one
    /// multiplexed connection.
    #[default]
    Single,
    /// A Redis Cluster reached through its seed nodes: commands go to the node owning
    /// their key's slot (a queue's keys share one slot), keyless ones to the node
    /// owning the queue's slot, following the cluster through failovers.
    Cluster,
}

/// The seed URLs of a comma-separated list (`redis://a:1,redis://b:2`): a comma
/// starts a new seed only where a scheme (`…://`) follows, so a password holding a
/// comma stays whole. One URL gives one seed.
pub fn seed_urls(url: &str) -> Vec<&str> {
    let mut seeds: Vec<&str> = Vec::new();
    let mut start = 0;
    for (at, _) in url.match_indices(',') {
        let next = &url[at + 1..];
        let next_piece = next.split(',').next().unwrap_or_default();
        if next_piece.contains("://") {
            seeds.push(url[start..at].trim());
            start = at + 1;
        }
    }
    seeds.push(url[start..].trim());
    seeds
}

/// Longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;
/// Most completions in one script call: `complete.lua` unpacks two values per job into
/// one `XADD`, and Redis's Lua unpacks at most about 8,000 values at once.
pub const MAX_COMPLETION_BATCH: usize = 2000;

/// A [`RedisConfig`] field that cannot be used, named as the config names it.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RedisConfigError {
    /// The queue name is empty.
    #[error("queue: the name is empty")]
    EmptyQueue,
    /// The queue name is too long.
    #[error("queue: the name is {len} bytes; at most {MAX_QUEUE_NAME}")]
    QueueTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The queue name holds a character that is not allowed.
    #[error(
        "queue: {found:?} is not allowed in a queue name (letters, digits, `-`, `_`, `.`; \
         `{{` and `}}` would break the hash tag)"
    )]
    QueueCharacter {
        /// The first such character.
        found: char,
    },
    /// A size or duration is zero.
    #[error("{field}: must be more than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// A size is over its maximum.
    #[error("{field}: {value} is over the maximum of {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The maximum.
        max: u64,
    },
}

/// Checks a queue name alone (also for names given on a command line).
pub fn validate_queue_name(name: &str) -> Result<(), RedisConfigError> {
    if name.is_empty() {
        return Err(RedisConfigError::EmptyQueue);
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err(RedisConfigError::QueueTooLong { len: name.len() });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(RedisConfigError::QueueCharacter { found });
    }
    Ok(())
}

impl RedisConfig {
    /// Every field usable, or the first that is not, by name.
    pub fn validate(&self) -> Result<(), RedisConfigError> {
        validate_queue_name(&self.queue)?;
        let durations: [(&'static str, Duration); 6] = [
            ("result_ttl", self.result_ttl),
            ("notice_ttl", self.notice_ttl),
            ("dead_ttl", self.dead_ttl),
            ("blob_ttl", self.blob_ttl),
            ("maintenance_interval", self.maintenance_interval),
            ("response_timeout", self.response_timeout),
        ];
        for (field, value) in durations {
            if value.is_zero() {
                return Err(RedisConfigError::Zero { field });
            }
        }
        let sizes: [(&'static str, usize, usize); 2] = [
            ("chunk_bytes", self.chunk_bytes, 512 << 20),
            (
                "completion_batch",
                self.completion_batch,
                MAX_COMPLETION_BATCH,
            ),
        ];
        for (field, value, max) in sizes {
            if value == 0 {
                return Err(RedisConfigError::Zero { field });
            }
            if value > max {
                return Err(RedisConfigError::TooLarge {
                    field,
                    value: value as u64,
                    max: max as u64,
                });
            }
        }
        Ok(())
    }
}

/// `url` with its password replaced by `***`, for messages and logs:
/// `redis://user:secret@host:6379` becomes `redis://user:***@host:6379`, and a
/// `pass=`/`password=` query parameter (unix-socket URLs) becomes `pass=***`. A password
/// holding `/`, `?` or `#` (which a URL should percent-encode, but people type) is
/// hidden too: the user info ends at the last `@`.
pub fn redacted_url(url: &str) -> String {
    seed_urls(url)
        .into_iter()
        .map(redacted_one)
        .collect::<Vec<_>>()
        .join(",")
}

/// [`redacted_url`] of one URL.
fn redacted_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let shown_user = userinfo.map(|info| match info.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => info.to_owned(),
    });
    let after = match after.split_once('?') {
        Some((before, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("pass")
                            || key.eq_ignore_ascii_case("password") =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{before}?{}", query.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{}{after}", shown_user.unwrap_or_default())
}

/// The secrets `url` holds (its password, a `pass=` query value), so that a message
/// from the Redis client that might quote one can be scrubbed ([`scrubbed`]).
fn secrets_of(url: &str) -> Vec<&str> {
    seed_urls(url)
        .into_iter()
        .flat_map(secrets_of_one)
        .collect()
}

/// [`secrets_of`] one URL.
fn secrets_of_one(url: &str) -> Vec<&str> {
    let mut secrets = Vec::new();
    let Some((_, rest)) = url.split_once("://") else {
        return secrets;
    };
    if let Some(at) = rest.rfind('@')
        && let Some((_, password)) = rest[..at].split_once(':')
        && !password.is_empty()
    {
        secrets.push(password);
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=')
                && (key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password"))
                && !value.is_empty()
            {
                secrets.push(value);
            }
        }
    }
    secrets
}

/// `message` (an error from the Redis client about `url`) with every secret of `url`
/// replaced by `***` and the URL itself, if quoted, redacted: what a message about a
/// connection may show.
pub fn scrubbed(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &redacted_url(url));
    for secret in secrets_of(url) {
        out = out.replace(secret, "***");
    }
    out
}

/// The URL's password never shows in debug output.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("topology", &self.topology)
            .field("queue", &self.queue)
            .field("result_ttl", &self.result_ttl)
            .field("notice_ttl", &self.notice_ttl)
            .field("dead_ttl", &self.dead_ttl)
            .field("blob_ttl", &self.blob_ttl)
            .field("inline_limit", &self.inline_limit)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("maintenance_interval", &self.maintenance_interval)
            .field("completion_batch", &self.completion_batch)
            .field("response_timeout", &self.response_timeout)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_url_keeps_everything_but_the_password() {
        assert_eq!(
            redacted_url("redis://u:s3cr@t@host:6379/0"),
            "redis://u:***@host:6379/0"
        );
        assert_eq!(redacted_url("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redacted_url("redis://u@host"), "redis://u@host");
        assert_eq!(redacted_url("not a url"), "not a url");
        // A password with URL punctuation in it is still hidden whole.
        assert_eq!(
            redacted_url("redis://admin:pa/ss?w#d@host:1/2"),
            "redis://admin:***@host:1/2"
        );
        assert_eq!(
            redacted_url("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
    }

    #[test]
    fn seed_lists_split_at_schemes_and_hide_every_password() {
        assert_eq!(
            seed_urls("redis://a:1, redis://b:2,rediss://c:3"),
            ["redis://a:1", "redis://b:2", "rediss://c:3"]
        );
        assert_eq!(seed_urls("redis://host:6379"), ["redis://host:6379"]);
        // A comma in a password does not start a seed.
        assert_eq!(
            seed_urls("redis://u:p,w@a:1,redis://u:p,w@b:2"),
            ["redis://u:p,w@a:1", "redis://u:p,w@b:2"]
        );
        let list = "redis://u:s3cret@a:1,redis://u:s3cret@b:2";
        assert_eq!(redacted_url(list), "redis://u:***@a:1,redis://u:***@b:2");
        let clean = scrubbed(&format!("{list}: AUTH s3cret"), list);
        assert!(!clean.contains("s3cret"), "{clean}");
    }

    #[test]
    fn messages_and_debug_output_never_hold_the_password() {
        let url = "redis://admin:s3cret@host:6379/0";
        let message = format!("cannot connect to {url}: AUTH s3cret refused");
        let clean = scrubbed(&message, url);
        assert!(!clean.contains("s3cret"), "{clean}");
        assert!(clean.contains("redis://admin:***@host:6379/0"), "{clean}");
        let unix = "unix:///tmp/r.sock?pass=hunter2";
        assert_eq!(scrubbed("bad hunter2", unix), "bad ***");
        let debug = format!("{:?}", RedisConfig::new(url));
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("admin:***@host"), "{debug}");
    }

    #[test]
    fn queue_names_that_would_break_the_hash_tag_are_refused() {
        let mut config = RedisConfig::new("redis://127.0.0.1");
        config.validate().unwrap();
        for bad in ["a{b", "a}b", "{x}", "", "a b", "a:b", "é"] {
            config.queue = bad.into();
            let err = config.validate().unwrap_err();
            assert!(err.to_string().starts_with("queue:"), "{bad}: {err}");
        }
        config.queue = "x".repeat(MAX_QUEUE_NAME + 1);
        assert!(config.validate().is_err());
        config.queue = "from-file_2.v1".into();
        config.validate().unwrap();
    }

    #[test]
    fn zero_and_huge_values_name_their_field() {
        let mut config = RedisConfig::new("redis://127.0.0.1");
        config.completion_batch = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("completion_batch")
        );
        config.completion_batch = MAX_COMPLETION_BATCH + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("completion_batch")
        );
        config.completion_batch = 256;
        config.result_ttl = Duration::ZERO;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("result_ttl")
        );
    }
}
