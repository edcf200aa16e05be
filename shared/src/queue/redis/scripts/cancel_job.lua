-- cancel_job.lua: the one cancel rule, a function prepended to cancel.lua and
-- cancel_batch.lua (after check.lua; see `scripts.rs`). No KEYS or ARGV of its own.
--
-- cancel_job(jobs, record, group, prefix) cancels the job whose record is `record` if
-- no worker has claimed it: `jobs` is the job stream, `group` the consumer group,
-- `prefix` the queue's key prefix (`sluice:{q}:`), which a backlog named by the record
-- must start with. It answers 'cancelled', 'running' (claimed: it cannot be taken
-- back) or 'gone' (finished, cancelled before, or unknown); or nil and a problem when
-- the record, or the stream it names, is corrupt (then nothing changes).
--
-- Atomicity (for the script calling it): the pending check, the XDEL and the record
-- update happen together, so a worker cannot claim the entry (nor the dispatcher move
-- it) between the check and the delete. A job still in its tenant's backlog (the
-- record's `stream`, same hash tag) is deleted from there. Both keys are checked
-- before the first write.
local function cancel_job(jobs, record, group, prefix)
  local problem = foreign(record, 'hash')
  if problem then return nil, problem end
  local entry = redis.call('HGET', record, 'entry')
  if not entry then return 'gone' end
  local stream = redis.call('HGET', record, 'stream') or jobs
  if string.sub(stream, 1, #prefix) ~= prefix then
    return nil, record .. ' names a stream outside its queue'
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
  return 'gone'
end
