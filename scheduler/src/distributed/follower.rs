//! Waiting for a set of jobs: the completion notices, with direct look-ups as a
//! backstop for notices Redis lost.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::time::Duration;

use sluice_shared::queue::redis::RedisQueue;
use sluice_shared::{JobId, JobResult, QueueError};

use super::fetch_results;

/// Waits for jobs to finish: follows the completion notices, and, should notices be
/// missed (Redis restarted without them) or the notice stream be unusable (a key of
/// another type in its place), looks the results up directly.
pub struct Follower {
    last_notice: String,
    /// Ordered, so that direct look-ups can go round all of them in turn.
    outstanding: BTreeSet<JobId>,
    /// Where the next direct look-up starts.
    poll_from: Option<JobId>,
    /// Why notices are not followed any more (results are polled instead).
    polling: Option<String>,
    /// A warning for the caller to show, once.
    warning: Option<String>,
}

/// Results looked up directly per quiet round while notices are followed (a backstop
/// for lost notices), and per round once they are not (the only way then).
const LOOKUPS_WHILE_FOLLOWING: usize = 1_000;
const LOOKUPS_WHILE_POLLING: usize = 5_000;

impl Follower {
    /// Starts following from the newest notice now (call before enqueueing).
    pub async fn start(queue: &RedisQueue) -> Result<Self, QueueError> {
        let last_notice = queue.results().notices_from_now().await?;
        Ok(Follower {
            last_notice,
            outstanding: BTreeSet::new(),
            poll_from: None,
            polling: None,
            warning: None,
        })
    }

    /// Adds jobs to wait for.
    pub fn expect(&mut self, ids: impl IntoIterator<Item = JobId>) {
        self.outstanding.extend(ids);
    }

    /// Stops waiting for jobs (they were lost and cannot be enqueued again).
    pub fn forget(&mut self, ids: &[JobId]) {
        for id in ids {
            self.outstanding.remove(id);
        }
    }

    /// Jobs not finished yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The jobs not finished yet.
    pub fn outstanding_ids(&self) -> HashSet<JobId> {
        self.outstanding.iter().copied().collect()
    }

    /// Something the caller should tell the user about the way results are followed.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// The next finished jobs (waiting up to `wait`), with their results.
    ///
    /// A wrong-typed notice key fails every read alike, so it is told apart from Redis
    /// being away (which the caller waits out): the follower then polls results, and
    /// warns once with the key's name.
    pub async fn next(
        &mut self,
        queue: &RedisQueue,
        wait: Duration,
    ) -> Result<Vec<JobResult>, QueueError> {
        let mut finished = Vec::new();
        if self.polling.is_none() {
            match queue.results().completions(&self.last_notice, wait).await {
                Ok((last, notices)) => {
                    self.last_notice = last;
                    finished = notices
                        .into_iter()
                        .map(|(id, _)| id)
                        .filter(|id| self.outstanding.contains(id))
                        .collect();
                }
                Err(error) => {
                    let key = &queue.keys().done;
                    let kind = queue.admin().key_type(key).await?;
                    if kind == "stream" || kind == "none" {
                        return Err(error.into());
                    }
                    let why = format!(
                        "key {key} holds a {kind}, not a stream of completion notices \
                         (corrupted, or written by another application): \
                         looking results up directly instead"
                    );
                    self.warning = Some(why.clone());
                    self.polling = Some(why);
                }
            }
        } else {
            tokio::time::sleep(wait).await;
        }
        if finished.is_empty() && !self.outstanding.is_empty() {
            // Quiet: look results up directly, in case notices were lost.
            let budget = if self.polling.is_some() {
                LOOKUPS_WHILE_POLLING
            } else {
                LOOKUPS_WHILE_FOLLOWING
            };
            finished = self.next_lookups(budget);
        }
        let results = fetch_results(queue, &finished).await?;
        for result in &results {
            self.outstanding.remove(&result.job_id);
        }
        Ok(results)
    }

    /// Results of `ids` that are stored now (found by a scan, say).
    pub async fn collect(
        &mut self,
        queue: &RedisQueue,
        ids: &[JobId],
    ) -> Result<Vec<JobResult>, QueueError> {
        let ids: Vec<JobId> = ids
            .iter()
            .filter(|id| self.outstanding.contains(id))
            .copied()
            .collect();
        let results = fetch_results(queue, &ids).await?;
        for result in &results {
            self.outstanding.remove(&result.job_id);
        }
        Ok(results)
    }

    /// Up to `budget` outstanding ids, going round all of them over successive calls.
    fn next_lookups(&mut self, budget: usize) -> Vec<JobId> {
        let after = self.poll_from.take();
        let mut ids: Vec<JobId> = match after {
            Some(after) => self
                .outstanding
                .range((Bound::Excluded(after), Bound::Unbounded))
                .take(budget)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        if ids.len() < budget {
            let wrap = budget - ids.len();
            ids.extend(
                self.outstanding
                    .iter()
                    .take_while(|id| after.is_none_or(|after| **id <= after))
                    .take(wrap)
                    .copied(),
            );
        }
        self.poll_from = ids.last().copied();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(n: usize) -> (Follower, Vec<JobId>) {
        let ids: Vec<JobId> = (0..n).map(|_| JobId::new()).collect();
        let mut follower = Follower {
            last_notice: "0-0".into(),
            outstanding: BTreeSet::new(),
            poll_from: None,
            polling: None,
            warning: None,
        };
        follower.expect(ids.iter().copied());
        (follower, ids)
    }

    /// Lost notices used to be made up for by looking up the same first 1,000 ids on
    /// every quiet round; the rest could never be found.
    #[test]
    fn direct_lookups_go_round_every_outstanding_job() {
        let (mut follower, ids) = follower(2_500);
        let mut seen = HashSet::new();
        for _ in 0..3 {
            let batch = follower.next_lookups(1_000);
            assert!(!batch.is_empty() && batch.len() <= 1_000);
            seen.extend(batch);
        }
        assert_eq!(
            seen.len(),
            ids.len(),
            "three rounds of 1,000 cover 2,500 jobs"
        );

        // Jobs finishing between rounds never stop the rotation.
        follower.forget(&ids[..2_000]);
        let mut seen = HashSet::new();
        for _ in 0..2 {
            seen.extend(follower.next_lookups(300));
        }
        assert_eq!(seen.len(), 500);
        assert!(seen.iter().all(|id| !ids[..2_000].contains(id)));
    }
}
