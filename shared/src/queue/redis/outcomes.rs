//! A batch's progress from its outcome counters. `complete.lua` and `dead.lua` count a
//! job's final outcome in its batch hash (`sluice:{q}:batch:<id>`, fields
//! `n:<kind>`) and note it in the job's record (`outcome`) in the same script that
//! stores the result, once per job (results are never replaced; `dlq_retry.lua` takes
//! the count back with the failure it deletes). Reading a batch's status is then one
//! `HGETALL` and one `HGET` per job, never a decoded result.

use std::collections::BTreeMap;

use super::{RedisQueue, on_key, unavailable};
use crate::job::JobId;
use crate::outcome::OutcomeKind;
use crate::queue::QueueError;

/// The counter field prefix in a batch hash.
const COUNTER: &str = "n:";

/// What a batch's counters say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchCounts {
    pub tenant: String,
    /// Jobs submitted in the batch.
    pub total: u64,
    /// Finished jobs per outcome kind, each job counted once.
    pub by_outcome: BTreeMap<String, u64>,
    /// Each job of the batch, in submission order, with its outcome once finished.
    pub jobs: Vec<(JobId, Option<OutcomeKind>)>,
}

impl BatchCounts {
    /// Finished jobs.
    pub fn done(&self) -> u64 {
        self.by_outcome.values().sum()
    }
}

fn kind_named(name: &str) -> Option<OutcomeKind> {
    OutcomeKind::ALL.into_iter().find(|k| k.as_str() == name)
}

impl RedisQueue {
    /// Batch `id`'s counters, if it exists and belongs to `tenant` (another tenant's
    /// batch reads as missing, and costs no more than a missing one).
    pub async fn batch_counts(
        &self,
        id: &str,
        tenant: &str,
    ) -> Result<Option<BatchCounts>, QueueError> {
        // Batch ids are UUIDs; anything else (`<id>:jobs`, say) names another key.
        if uuid::Uuid::parse_str(id).is_err() {
            return Ok(None);
        }
        let key = self.batch_key(id);
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(&key))?;
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if field("tenant").is_none_or(|owner| owner != tenant) {
            return Ok(None);
        }
        let mut by_outcome = BTreeMap::new();
        for (name, value) in &fields {
            if let Some(kind) = name.strip_prefix(COUNTER).and_then(kind_named) {
                // A counter that is not a number was not written by Sluice; it counts 0.
                let n: i64 = value.parse().unwrap_or(0);
                if n > 0 {
                    by_outcome.insert(kind.as_str().to_owned(), n as u64);
                }
            }
        }
        let list = format!("{key}:jobs");
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(&list)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(on_key(&list))?;
        let ids: Vec<JobId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let mut jobs = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let mut pipe = redis::pipe();
            for job in chunk {
                pipe.cmd("HGET")
                    .arg(self.job_record_key(*job))
                    .arg("outcome");
            }
            let outcomes: Vec<Result<Option<String>, redis::RedisError>> = pipe
                .ignore_errors()
                .query_async(&mut self.connection())
                .await
                .map_err(unavailable)?;
            for (job, outcome) in chunk.iter().zip(outcomes) {
                // A corrupt record hides that job's outcome, not the batch's.
                let kind = outcome.ok().flatten().as_deref().and_then(kind_named);
                jobs.push((*job, kind));
            }
        }
        Ok(Some(BatchCounts {
            tenant: tenant.to_owned(),
            total: field("total")
                .and_then(|t| t.parse().ok())
                .unwrap_or(ids.len() as u64),
            by_outcome,
            jobs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use crate::job::JobId;
    use crate::outcome::{JobResult, Outcome};

    /// `dlq_retry.lua` tells a stored success from a failure by byte 18 of the result
    /// (version, id length, 16 id bytes, then the outcome's variant): this pins that.
    #[test]
    fn a_stored_success_has_variant_zero_at_byte_18() {
        let id = JobId(uuid::Uuid::now_v7());
        let success = codec::encode_value(&JobResult::without_run(id, Outcome::Success, 1));
        assert_eq!(success[18], 0);
        let failed = codec::encode_value(&JobResult::without_run(id, Outcome::Timeout, 1));
        assert_ne!(failed[18], 0);
        assert_eq!(&success[2..18], id.0.as_bytes());
    }
}
