-- cancel_job.lua: the one cancel rule, a function prepended to cancel.lua and
-- cancel_batch.lua (after check.lua; see `scripts.rs`). No KEYS or ARGV of its own.
--
-- cancel_job(jobs, record, result, backlog, group, delayed, lookup) cancels the job
-- whose record is `record` (`…job:<uuid>`) if no worker has claimed it: `jobs` is the
-- job stream, `result` the job's stored-result key, `backlog` its tenant's backlog
-- stream (the job stream again for a job without a tenant), `group` the consumer
-- group, `delayed` the delayed set and `lookup` the `in_delayed(delayed)` of the
-- calling script (one read of the set per script). Every key it touches is one of
-- these (declared by the calling script). It answers 'cancelled', 'running' (claimed:
-- it cannot be taken back) or 'gone' (finished, cancelled before, or unknown); or nil
-- and a problem when the record, or the stream it names, is corrupt (then nothing
-- changes).
--
-- A job that is in no stream and has no result and no outcome may be waiting in the
-- delayed set to be retried: found among the set's first DELAYED_SEARCHED entries (the
-- soonest due), it is removed from there and cancelled too; promote.lua also drops a
-- delayed job whose record says cancelled. Past that many delayed entries a waiting
-- job answers 'gone' (the bound keeps one script short).
--
-- Atomicity (for the script calling it): the pending check, the XDEL and the record
-- update happen together, so a worker cannot claim the entry (nor the dispatcher move
-- it) between the check and the delete. A job still in its tenant's backlog (the
-- record's `stream`, same hash tag) is deleted from there. Both keys are checked
-- before the first write.
-- The most delayed-set entries (the soonest due) searched for jobs waiting to retry.
local DELAYED_SEARCHED = 10000

-- in_delayed(delayed) gives a lookup from a job id (the UUID's 36-character text) to
-- its envelope in the delayed set `delayed`, reading the set's first DELAYED_SEARCHED
-- entries once, on the first lookup. The envelope's head is the format version byte,
-- 16 (the id's length), then the id's 16 bytes (see promote.lua).
local function in_delayed(delayed)
  local by_id = nil
  return function(id)
    if not by_id then
      by_id = {}
      if redis.call('TYPE', delayed)['ok'] == 'zset' then
        for _, envelope in ipairs(redis.call('ZRANGE', delayed, 0, DELAYED_SEARCHED - 1)) do
          if #envelope >= 18 and string.byte(envelope, 2) == 16 then
            local hex = string.format(string.rep('%02x', 16), string.byte(envelope, 3, 18))
            by_id[hex] = envelope
          end
        end
      end
    end
    return by_id[string.gsub(id, '-', '')]
  end
end

local function cancel_job(jobs, record, result, backlog, group, delayed, lookup)
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
  -- Waiting to be retried: its envelope is in the delayed set (a record naming a
  -- deleted entry may also be stale, its job queued again elsewhere: then 'gone').
  local envelope = lookup(string.sub(record, -36))
  if envelope and redis.call('ZREM', delayed, envelope) == 1 then
    redis.call('HSET', record, 'state', 'cancelled')
    return 'cancelled'
  end
  return 'gone'
end
