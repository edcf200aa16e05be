-- cancel_job.lua: the one cancel rule, a function prepended to cancel.lua and
-- cancel_batch.lua (after check.lua; see `scripts.rs`). No KEYS or ARGV of its own.
--
-- cancel_job(jobs, record, result, backlog, group) cancels the job whose record is
-- `record` if no worker has claimed it: `jobs` is the job stream, `result` the job's
-- stored-result key, `backlog` its tenant's backlog stream (the job stream again for a
-- job without a tenant), `group` the consumer group. Every key it touches is one of
-- these (declared by the calling script). It answers 'cancelled', 'running' (claimed:
-- it cannot be taken back) or 'gone' (finished, cancelled before, or unknown); or nil
-- and a problem when the record, or the stream it names, is corrupt (then nothing
-- changes).
--
-- A job that is in no stream, has no result and no outcome is waiting in the delayed
-- set to be retried (or Redis lost it): it is cancelled too, by its record alone;
-- promote.lua drops a delayed job whose record says cancelled instead of running it.
--
-- Atomicity (for the script calling it): the pending check, the XDEL and the record
-- update happen together, so a worker cannot claim the entry (nor the dispatcher move
-- it) between the check and the delete. A job still in its tenant's backlog (the
-- record's `stream`, same hash tag) is deleted from there. Both keys are checked
-- before the first write.
local function cancel_job(jobs, record, result, backlog, group)
  local problem = foreign(record, 'hash')
  if problem then return nil, problem end
  local entry = redis.call('HGET', record, 'entry')
  if not entry then return 'gone' end
  if redis.call('HGET', record, 'state') == 'cancelled' then return 'gone' end
  local stream = redis.call('HGET', record, 'stream') or jobs
  if stream ~= jobs and stream ~= backlog then
    return nil, record .. ' names a stream outside its queue (neither the job stream nor its tenant\'s backlog)'
  end
  problem = foreign(stream, 'stream')
  if problem then return nil, problem end
  if stream == jobs then
    local p = redis.call('XPENDING', jobs, group, entry, entry, 1)
    if #p > 0 then return 'running' end
  end
  if redis.call('XDEL', stream, entry) == 1 then
    redis.call('HSET', record, 'state', 'cancelled')
    return 'cancelled'
  end
  if redis.call('EXISTS', result) == 1 or redis.call('HEXISTS', record, 'outcome') == 1 then
    return 'gone'
  end
  redis.call('HSET', record, 'state', 'cancelled')
  return 'cancelled'
end
