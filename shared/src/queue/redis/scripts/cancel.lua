-- cancel.lua: cancels a job that is queued and not yet claimed.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the job's record (hash: tenant, stream, entry, state)
-- ARGV[1]  consumer group
-- Returns  'cancelled', 'running' (claimed: it cannot be taken back), or 'gone'
--          (finished, cancelled before, or unknown).
--
-- Atomicity: the pending check, the XDEL and the record update happen together, so a
-- worker cannot claim the entry (nor the dispatcher move it) between the check and the
-- delete. A job still in its tenant's backlog (the record's `stream`, same hash tag)
-- is deleted from there.
local entry = redis.call('HGET', KEYS[2], 'entry')
if not entry then return 'gone' end
local stream = redis.call('HGET', KEYS[2], 'stream') or KEYS[1]
if stream == KEYS[1] then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p > 0 then return 'running' end
end
if redis.call('XDEL', stream, entry) == 1 then
  redis.call('HSET', KEYS[2], 'state', 'cancelled')
  return 'cancelled'
end
return 'gone'
