//! Every Lua script Sluice runs, each built once per process (`Script::new` hashes its
//! source; `EVALSHA` then sends only the hash). The scripts themselves live in
//! `scripts/*.lua`, each with its KEYS, ARGV and atomicity argument in its header.
//!
//! Scripts that move a job have `scripts/check.lua` prepended: its helpers check every
//! key the script will write and answer `CORRUPT <what>` before the first write when
//! one is foreign.

use std::sync::LazyLock;

use redis::Script;

/// The scripts, by the file each comes from.
pub(crate) struct Scripts {
    /// `promote.lua`: due delayed jobs onto the job stream (or their tenant's backlog).
    pub promote: Script,
    /// `takeover.lua`: entries idle past their lease, with their delivery counts.
    pub takeover: Script,
    /// `owner.lua`: renews a lease if still held.
    pub owner: Script,
    /// `complete.lua`: stores a batch of results and removes their entries.
    pub complete: Script,
    /// `retry.lua`: removes an entry and delays its next attempt.
    pub retry: Script,
    /// `dead.lua`: removes an entry and records it as dead with its result.
    pub dead: Script,
    /// `release.lua`: gives an entry back at once as a fresh entry.
    pub release: Script,
    /// `dlq_retry.lua`: dead letters back onto the queue, a page at a time.
    pub dlq_retry: Script,
    /// `enqueue_owned.lua`: a tenant's jobs into its backlog, with their records.
    pub enqueue_owned: Script,
    /// `cancel.lua`: removes a job no worker has claimed.
    pub cancel: Script,
    /// `cancel_batch.lua`: removes a page of a batch's jobs no worker has claimed.
    pub cancel_batch: Script,
    /// `enqueue_batch.lua`: a command-line batch's jobs onto the job stream, with
    /// their records.
    pub enqueue_batch: Script,
    /// `issue.lua`: stores a new token's hash for a tenant.
    pub issue: Script,
    /// `revoke.lua`: revokes every token of a tenant.
    pub revoke: Script,
    /// `hold.lua`: takes or renews the dispatcher role.
    pub hold: Script,
    /// `unhold.lua`: gives up the dispatcher role, or an artifact's compile lock.
    pub unhold: Script,
    /// `dispatch.lua`: admits a tenant's oldest backlog jobs onto the job stream.
    pub dispatch: Script,
    /// `quota_stored.lua`: counts stored bytes against a tenant's quota.
    pub quota_stored: Script,
    /// `quota_release.lua`: gives back stored bytes counted ahead and not used.
    pub quota_release: Script,
    /// `module_put.lua`: stores a tenant's module and its hold.
    pub module_put: Script,
    /// `module_touch.lua`: restarts a tenant's module's lifetime.
    pub module_touch: Script,
    /// `module_rm.lua`: drops a tenant's hold on a module.
    pub module_rm: Script,
    /// `module_meta.lua`: records a stored module's metadata with the bytes' lifetime.
    pub module_meta: Script,
    /// `module_del.lua`: the operator's delete of a module and its derived keys.
    pub module_del: Script,
    /// `artifact_put.lua`: stores an artifact (or a refusal) within its module's life.
    pub artifact_put: Script,
    /// `artifact_get.lua`: reads an artifact and refreshes it within its module's life.
    pub artifact_get: Script,
    /// `locate_stream.lua`: a page of job ids from a stream, with whether each is pending.
    pub locate_stream: Script,
    /// `locate_delayed.lua`: a page of job ids from the delayed set.
    pub locate_delayed: Script,
    /// `find_job.lua`: a page of a search for one job, with where it is.
    pub find_job: Script,
    /// `consumer_forget.lua`: removes a consumer that holds nothing.
    pub consumer_forget: Script,
    /// `heartbeat.lua`: a worker's beat, and forgetting workers gone for long.
    pub heartbeat: Script,
}

/// A script with the key checks of `check.lua` in front (see that file).
fn checked(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("scripts/check.lua")))
}

/// A script with the cancel rule of `cancel_job.lua` in front (see that file).
fn cancelling(body: &str) -> String {
    format!("{}\n{body}", include_str!("scripts/cancel_job.lua"))
}

/// The one set of scripts of this process.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    promote: Script::new(include_str!("scripts/promote.lua")),
    takeover: checked(include_str!("scripts/takeover.lua")),
    owner: checked(include_str!("scripts/owner.lua")),
    complete: checked(include_str!("scripts/complete.lua")),
    retry: checked(include_str!("scripts/retry.lua")),
    dead: checked(include_str!("scripts/dead.lua")),
    release: Script::new(include_str!("scripts/release.lua")),
    dlq_retry: checked(include_str!("scripts/dlq_retry.lua")),
    enqueue_owned: checked(include_str!("scripts/enqueue_owned.lua")),
    cancel: checked(&cancelling(include_str!("scripts/cancel.lua"))),
    cancel_batch: checked(&cancelling(include_str!("scripts/cancel_batch.lua"))),
    enqueue_batch: checked(include_str!("scripts/enqueue_batch.lua")),
    issue: checked(include_str!("scripts/issue.lua")),
    revoke: checked(include_str!("scripts/revoke.lua")),
    hold: Script::new(include_str!("scripts/hold.lua")),
    unhold: Script::new(include_str!("scripts/unhold.lua")),
    dispatch: Script::new(include_str!("scripts/dispatch.lua")),
    quota_stored: Script::new(include_str!("scripts/quota_stored.lua")),
    quota_release: Script::new(include_str!("scripts/quota_release.lua")),
    module_put: Script::new(include_str!("scripts/module_put.lua")),
    module_touch: Script::new(include_str!("scripts/module_touch.lua")),
    module_rm: Script::new(include_str!("scripts/module_rm.lua")),
    module_meta: Script::new(include_str!("scripts/module_meta.lua")),
    module_del: Script::new(include_str!("scripts/module_del.lua")),
    artifact_put: Script::new(include_str!("scripts/artifact_put.lua")),
    artifact_get: Script::new(include_str!("scripts/artifact_get.lua")),
    locate_stream: Script::new(include_str!("scripts/locate_stream.lua")),
    locate_delayed: Script::new(include_str!("scripts/locate_delayed.lua")),
    find_job: Script::new(include_str!("scripts/find_job.lua")),
    consumer_forget: Script::new(include_str!("scripts/consumer_forget.lua")),
    heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
});
