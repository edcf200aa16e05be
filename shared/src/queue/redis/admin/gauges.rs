//! The queue's state in one read, for the exporter (`sluice serve`'s and `sluice
//! exporter`'s `/metrics`) and `sluice top`: depths, consumer-group lag and pending,
//! the age of the oldest waiting entry, the counters of the stats hash, live workers,
//! per-tenant backlog and in-flight, and Redis's memory figures.
//!
//! Round trips, whatever the queue holds: one pipeline of the fixed keys, server time
//! and `INFO memory`; the tenants with a backlog by `SSCAN` (one call per ~1,000
//! tenants, at most [`MAX_GAUGE_TENANTS`] read, so usually one or two calls); one
//! pipeline of the oldest undelivered entry, each read tenant's backlog length and
//! oldest entry (`XLEN` + `XRANGE … COUNT 1`), and the admitted hash (only while it
//! holds at most [`MAX_ADMITTED_READ`] jobs). At most 2 × 2,000 + 2 commands and a
//! 20,000-value reply in the last pipeline, so a scrape costs Redis the same bounded
//! work whether ten tenants or a million exist.

use std::collections::HashMap;
use std::time::Duration;

use super::super::connection::Connection;
use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};

use super::super::GROUP;
use super::super::error::{StoreError, bad_reply, unavailable};
use super::super::keys::Keys;
use super::super::reply::{bytes_of, count_of, flat_pairs, into_entries};
use super::{Admin, AdminError};
use crate::outcome::OutcomeKind;

/// Most tenants with a backlog one read looks at (the rest are not read, and
/// [`QueueGauges::tenants_capped`] says so).
pub const MAX_GAUGE_TENANTS: usize = 2_000;

/// Most admitted jobs one read counts by tenant: a larger admitted hash is not read
/// ([`QueueGauges::inflight_read`] is false, and [`QueueGauges::tenants_capped`] says
/// so).
pub const MAX_ADMITTED_READ: u64 = 20_000;

/// Tenants one `SSCAN` call asks for.
const SSCAN_PAGE: usize = 1_000;

/// The counters of a queue's stats hash (monotonic; kept by the Lua scripts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounters {
    /// Successful runs whose results were stored (workers store a result through
    /// `complete` for successes only).
    pub completed: u64,
    /// Jobs that ended in failure: each dead-lettering counts once (a dead letter
    /// retried with `sluice dlq retry` that dies again counts again).
    pub failed: u64,
    /// Runs put back to retry.
    pub retried: u64,
    /// Jobs moved to the dead letters.
    pub dead: u64,
    /// Jobs moved to the dead letters by outcome kind: every kind, in
    /// [`OutcomeKind::ALL`] order, 0 for those never seen.
    pub dead_by_reason: Vec<(OutcomeKind, u64)>,
    /// Duplicate completions ignored.
    pub duplicates: u64,
    /// Completions refused because the job had moved on.
    pub stale: u64,
    /// Dead letters put back on the queue.
    pub dlq_retried: u64,
}

impl QueueCounters {
    /// The counters in the stats hash's fields (absent or unparsable fields read 0).
    pub fn from_fields(fields: &HashMap<String, String>) -> Self {
        let get = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        QueueCounters {
            completed: get("completed"),
            failed: get("failed"),
            retried: get("retried"),
            dead: get("dead"),
            dead_by_reason: OutcomeKind::ALL
                .into_iter()
                .map(|kind| (kind, get(&format!("dead:{}", kind.as_str()))))
                .collect(),
            duplicates: get("duplicates"),
            stale: get("stale"),
            dlq_retried: get("dlq_retried"),
        }
    }
}

/// One tenant's jobs: waiting in its backlog, and admitted but not finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLoad {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting in its backlog for admission.
    pub backlog: u64,
    /// Jobs admitted onto the queue and not settled.
    pub inflight: u64,
}

/// The state of one queue as the exporter reads it ([`Admin::gauges`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueGauges {
    /// Entries not yet delivered to the group: the group's lag when Redis knows it,
    /// otherwise the stream's length less its pending entries (the same number while
    /// every acknowledged entry is deleted, as Sluice does).
    pub ready: u64,
    /// The group's lag as `XINFO GROUPS` reports it (`None` when Redis does not know
    /// it, after an undelivered entry was deleted, or when there is no group).
    pub lag: Option<u64>,
    /// Entries delivered and not acknowledged (leased).
    pub pending: u64,
    /// Age of the oldest undelivered entry by the server's clock (zero when none).
    pub oldest_ready_age: Duration,
    /// Age of the oldest job waiting in any read tenant's backlog for admission, by the
    /// server's clock (zero when none).
    pub oldest_backlog_age: Duration,
    /// Jobs waiting for their due time.
    pub delayed: u64,
    /// Dead letters kept now.
    pub dead_letters: u64,
    /// The stats hash's counters.
    pub counters: QueueCounters,
    /// Workers whose heartbeat has not run out.
    pub workers: u64,
    /// Consumers of the group.
    pub consumers: u64,
    /// Tenants with a backlog or jobs in flight, largest (backlog + in-flight) first.
    pub tenants: Vec<TenantLoad>,
    /// Whether the tenants were cut at [`MAX_GAUGE_TENANTS`] or the admitted hash was
    /// past [`MAX_ADMITTED_READ`] (the per-tenant figures are then incomplete).
    pub tenants_capped: bool,
    /// Whether the admitted hash was read, i.e. [`TenantLoad::inflight`] is a figure
    /// (false past [`MAX_ADMITTED_READ`]: every in-flight reads 0 and is not true).
    pub inflight_read: bool,
    /// Redis `used_memory`, bytes.
    pub used_memory_bytes: u64,
    /// Redis `maxmemory`, bytes (0: no limit).
    pub maxmemory_bytes: u64,
    /// The server's clock when this was read (ms since the Unix epoch).
    pub server_time_ms: u64,
}

/// The millisecond part of a stream entry id (`<ms>-<seq>`).
pub fn entry_id_ms(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// `used_memory` and `maxmemory` from the text of `INFO memory` (0 for either missing).
pub fn parse_info_memory(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .filter_map(|line| line.trim_end().split_once(':'))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (field("used_memory"), field("maxmemory"))
}

/// Whether an error reply means "nothing there": a key of another type, or a stream or
/// group that does not exist (`XINFO GROUPS` on no key answers `ERR no such key`).
fn reads_as_empty(error: &RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "NOGROUP"))
        || error.to_string().contains("no such key")
}

/// One pipelined reply, `what` naming its command. Only [`reads_as_empty`] errors read
/// as `Nil`; any other error reply (`LOADING`, `BUSY`, `NOPERM`, …) fails the whole
/// read, so the exporter keeps its last figures and counts the error rather than
/// reporting zeros (a counter dropping to 0 would look like a reset).
fn checked(reply: Option<Result<Value, RedisError>>, what: &str) -> Result<Value, StoreError> {
    match reply {
        Some(Ok(v)) => Ok(v),
        Some(Err(error)) if reads_as_empty(&error) => {
            tracing::debug!(%error, what, "queue gauge read as empty");
            Ok(Value::Nil)
        }
        Some(Err(error)) => Err(StoreError::Unavailable(format!("{what}: {error}"))),
        None => Err(bad_reply(format!("{what}: no reply in the pipeline"))),
    }
}

/// Sends `pipe`, keeping each command's error reply for [`checked`] to judge; only a
/// transport failure fails here.
async fn send(
    pipe: &mut redis::Pipeline,
    conn: &Connection,
) -> Result<std::vec::IntoIter<Result<Value, RedisError>>, StoreError> {
    let replies: Vec<Result<Value, RedisError>> = pipe
        .ignore_errors()
        .query_async(&mut conn.clone())
        .await
        .map_err(unavailable)?;
    Ok(replies.into_iter())
}

impl Admin<'_> {
    /// The queue's state in a few pipelined reads (see the module doc) over the
    /// queue's shared connection (`sluice top`; the exporter reads through its own
    /// [`GaugeReader`](super::GaugeReader)). A key of the wrong type or a missing
    /// stream or group reads as empty; a transport failure or any other error reply
    /// (`LOADING`, `BUSY`, `NOPERM`, …) is an error.
    pub async fn gauges(self) -> Result<QueueGauges, AdminError> {
        read(&self.q.connection(), &self.q.keys).await
    }
}

/// The queue of `keys`'s state over `conn` ([`Admin::gauges`]); read-only.
pub(super) async fn read(conn: &Connection, keys: &Keys) -> Result<QueueGauges, AdminError> {
    let admitted_key = keys.admitted();
    let mut pipe = redis::pipe();
    pipe.cmd("XINFO").arg("GROUPS").arg(&keys.jobs);
    pipe.cmd("XLEN").arg(&keys.jobs);
    pipe.cmd("ZCARD").arg(&keys.delayed);
    pipe.cmd("HGETALL").arg(&keys.stats);
    pipe.cmd("XLEN").arg(&keys.dead);
    pipe.cmd("HVALS").arg(&keys.workers);
    pipe.cmd("TIME");
    pipe.cmd("INFO").arg("memory");
    pipe.cmd("HLEN").arg(&admitted_key);
    let mut replies = send(&mut pipe, conn).await?;
    let mut next = |what: &str| checked(replies.next(), what);

    let group = match next("XINFO GROUPS")? {
        Value::Array(groups) => groups
            .iter()
            .map(flat_pairs)
            .find(|g| g.get("name").map(String::as_str) == Some(GROUP)),
        _ => None,
    };
    let len = count_of(&next("XLEN jobs")?);
    let delayed = count_of(&next("ZCARD delayed")?);
    let counters = QueueCounters::from_fields(&flat_pairs(&next("HGETALL stats")?));
    let dead_letters = count_of(&next("XLEN dead")?);
    let beats = next("HVALS workers")?;
    let server_time_ms = match next("TIME")? {
        Value::Array(parts) if parts.len() == 2 => {
            let part = |i: usize| parts.get(i).map_or(0, count_of);
            part(0) * 1000 + part(1) / 1000
        }
        // Without the server's clock every heartbeat would read as live.
        other => return Err(bad_reply(format!("TIME: {other:?}")).into()),
    };
    let (used_memory_bytes, maxmemory_bytes) = match next("INFO memory")? {
        Value::VerbatimString { text, .. } => parse_info_memory(&text),
        other => parse_info_memory(
            &bytes_of(&other)
                .map_or_else(String::new, |b| String::from_utf8_lossy(&b).into_owned()),
        ),
    };
    let admitted_len = count_of(&next("HLEN admitted")?);

    let workers = match &beats {
        Value::Array(untils) => untils
            .iter()
            .filter(|until| count_of(until) >= server_time_ms)
            .count() as u64,
        _ => 0,
    };
    let field = |k: &str| group.as_ref().and_then(|g| g.get(k));
    let pending = field("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
    let consumers = field("consumers").and_then(|v| v.parse().ok()).unwrap_or(0);
    let lag = field("lag").and_then(|v| v.parse().ok());
    let last_delivered = field("last-delivered-id").cloned();

    let (backlog_tenants, mut tenants_capped) = backlog_tenants(conn, keys).await?;

    let mut pipe = redis::pipe();
    pipe.cmd("XRANGE")
        .arg(&keys.jobs)
        .arg(last_delivered.map_or_else(|| "-".to_owned(), |id| format!("({id}")))
        .arg("+")
        .arg("COUNT")
        .arg(1);
    for tenant in &backlog_tenants {
        let backlog = keys.backlog(tenant);
        pipe.cmd("XLEN").arg(&backlog);
        pipe.cmd("XRANGE")
            .arg(&backlog)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    let read_admitted = admitted_len <= MAX_ADMITTED_READ;
    tenants_capped |= !read_admitted;
    if read_admitted {
        pipe.cmd("HVALS").arg(&admitted_key);
    }
    let mut replies = send(&mut pipe, conn).await?;
    let mut next = |what: &str| checked(replies.next(), what);

    let age_of_first = |reply: Value| {
        into_entries(reply)
            .ok()
            .and_then(|entries| entries.into_iter().next())
            .and_then(|(id, _)| entry_id_ms(&id))
            .map_or(Duration::ZERO, |ms| {
                Duration::from_millis(server_time_ms.saturating_sub(ms))
            })
    };
    let oldest_ready_age = age_of_first(next("XRANGE jobs")?);
    let mut oldest_backlog_age = Duration::ZERO;
    let mut by_tenant: HashMap<String, TenantLoad> = HashMap::new();
    for tenant in backlog_tenants {
        let backlog = count_of(&next("XLEN backlog")?);
        oldest_backlog_age = oldest_backlog_age.max(age_of_first(next("XRANGE backlog")?));
        if backlog > 0 {
            by_tenant.insert(
                tenant.clone(),
                TenantLoad {
                    tenant,
                    backlog,
                    inflight: 0,
                },
            );
        }
    }
    if read_admitted && let Value::Array(owners) = next("HVALS admitted")? {
        for owner in owners.iter().filter_map(bytes_of) {
            let tenant = String::from_utf8_lossy(&owner).into_owned();
            by_tenant
                .entry(tenant.clone())
                .or_insert_with(|| TenantLoad {
                    tenant,
                    ..TenantLoad::default()
                })
                .inflight += 1;
        }
    }
    let mut tenants: Vec<TenantLoad> = by_tenant.into_values().collect();
    tenants.sort_by(|a, b| {
        (b.backlog + b.inflight)
            .cmp(&(a.backlog + a.inflight))
            .then_with(|| a.tenant.cmp(&b.tenant))
    });
    Ok(QueueGauges {
        ready: lag.unwrap_or_else(|| len.saturating_sub(pending)),
        lag,
        pending,
        oldest_ready_age,
        oldest_backlog_age,
        delayed,
        dead_letters,
        counters,
        workers,
        consumers,
        tenants,
        tenants_capped,
        inflight_read: read_admitted,
        used_memory_bytes,
        maxmemory_bytes,
        server_time_ms,
    })
}

/// The tenants with a backlog, at most [`MAX_GAUGE_TENANTS`], and whether there were
/// more.
async fn backlog_tenants(
    conn: &Connection,
    keys: &Keys,
) -> Result<(Vec<String>, bool), AdminError> {
    let set = keys.backlogs();
    let mut cursor = 0u64;
    let mut tenants = Vec::new();
    loop {
        let reply: Result<(u64, Vec<String>), RedisError> = redis::cmd("SSCAN")
            .arg(&set)
            .arg(cursor)
            .arg("COUNT")
            .arg(SSCAN_PAGE)
            .query_async(&mut conn.clone())
            .await;
        let (next, page) = match reply {
            Ok(page) => page,
            // A key of another type: no backlogs to report. Any other error reply
            // (NOPERM, LOADING, …) fails the read.
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok((Vec::new(), false)),
            Err(e) => return Err(unavailable(e).into()),
        };
        tenants.extend(page);
        cursor = next;
        if tenants.len() >= MAX_GAUGE_TENANTS {
            // SSCAN may return a member twice; the cut is what matters here.
            tenants.sort();
            tenants.dedup();
            if tenants.len() >= MAX_GAUGE_TENANTS {
                tenants.truncate(MAX_GAUGE_TENANTS);
                return Ok((tenants, cursor != 0));
            }
        }
        if cursor == 0 {
            tenants.sort();
            tenants.dedup();
            return Ok((tenants, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_memory_is_read_by_field() {
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                    maxmemory:0\r\nmaxmemory_human:0B\r\n";
        assert_eq!(parse_info_memory(text), (1_048_576, 0));
        assert_eq!(
            parse_info_memory("used_memory_rss:9\nmaxmemory:268435456\nused_memory:7\n"),
            (7, 268_435_456)
        );
        assert_eq!(parse_info_memory(""), (0, 0));
        assert_eq!(parse_info_memory("used_memory:lots\n"), (0, 0));
    }

    #[test]
    fn only_missing_or_foreign_keys_read_as_empty() {
        // Error replies as they come off the wire.
        let parsed = |text: &str| -> RedisError {
            redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
                .and_then(Value::extract_error)
                .expect_err("an error reply")
        };
        for empty in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR no such key",
            "NOGROUP No such key 'q' or consumer group 'g'",
        ] {
            let error = parsed(empty);
            assert!(reads_as_empty(&error), "{empty}: {error:?}");
            assert_eq!(checked(Some(Err(error)), "x").unwrap(), Value::Nil);
        }
        for failure in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "NOPERM User ro has no permissions to run the 'time' command",
        ] {
            let error = parsed(failure);
            assert!(!reads_as_empty(&error), "{failure}");
            assert!(checked(Some(Err(error)), "x").is_err(), "{failure}");
        }
        assert!(checked(None, "x").is_err());
    }

    #[test]
    fn entry_ids_give_their_milliseconds() {
        assert_eq!(entry_id_ms("1732800000000-7"), Some(1_732_800_000_000));
        assert_eq!(entry_id_ms("5"), Some(5));
        assert_eq!(entry_id_ms("x-1"), None);
        assert_eq!(entry_id_ms(""), None);
    }

    #[test]
    fn counters_list_every_dead_letter_reason() {
        let fields: HashMap<String, String> = [
            ("completed", "9"),
            ("failed", "4"),
            ("dead", "3"),
            ("dead:trap", "2"),
            ("dead:fuel_exhausted", "1"),
            ("dead:nonsense", "5"),
            ("retried", "not a number"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = QueueCounters::from_fields(&fields);
        assert_eq!((c.completed, c.failed, c.dead, c.retried), (9, 4, 3, 0));
        assert_eq!(c.dead_by_reason.len(), OutcomeKind::ALL.len());
        let of = |kind| c.dead_by_reason.iter().find(|(k, _)| *k == kind).unwrap().1;
        assert_eq!(of(OutcomeKind::Trap), 2);
        assert_eq!(of(OutcomeKind::FuelExhausted), 1);
        assert_eq!(of(OutcomeKind::Timeout), 0);
    }
}
