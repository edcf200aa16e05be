-- cancel.lua: cancels a job that is queued, or waiting to be retried, and not yet
-- claimed (the rule itself is `cancel_job` in cancel_job.lua, prepended with
-- check.lua).
--
-- KEYS[1]  the job stream
-- KEYS[2]  the job's record (hash: tenant, stream, entry, state, outcome)
-- KEYS[3]  the job's stored-result key (read only: a job with a result is finished)
-- KEYS[4]  the record's tenant's backlog stream (the job stream again for a record
--          without a tenant): the only other stream the record may name
-- KEYS[5]  the record's batch hash (the job stream again for a job of no batch): a
--          cancelled job is counted in its `n:cancelled`, while the hash exists
-- KEYS[6]  the delayed set (a job waiting to be retried is removed from it)
-- ARGV[1]  consumer group
-- Returns  'cancelled', 'running' (claimed: it cannot be taken back), or 'gone'
--          (finished, cancelled before, or unknown); an error 'CORRUPT <key> …'
--          (nothing changes) when the record, or the stream it names, is corrupt.
--
-- Atomicity: the pending check, the XDEL and the record update happen together, so a
-- worker cannot claim the entry (nor the dispatcher move it) between the check and the
-- delete. A job still in its tenant's backlog is deleted from there. Every key is
-- checked before the first write.
local answer, problem = cancel_job(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], KEYS[6],
  in_delayed(KEYS[6]))
if problem then return redis.error_reply('CORRUPT ' .. problem) end
if answer == 'cancelled' and KEYS[5] ~= KEYS[1]
  and redis.call('TYPE', KEYS[5])['ok'] == 'hash' then
  redis.call('HINCRBY', KEYS[5], 'n:cancelled', 1)
end
return answer
