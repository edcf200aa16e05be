-- cancel.lua: cancels a job that is queued and not yet claimed.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the job's record (hash: tenant, stream, entry, state)
-- ARGV[1]  consumer group
-- ARGV[2]  the queue's key prefix (`sluice:{q}:`): a backlog named by the record
--          must start with it
-- Returns  'cancelled', 'running' (claimed: it cannot be taken back), or 'gone'
--          (finished, cancelled before, or unknown); an error 'CORRUPT <key> …'
--          (nothing changes) when the record, or the stream it names, is corrupt.
--
-- Atomicity: the pending check, the XDEL and the record update happen together, so a
-- worker cannot claim the entry (nor the dispatcher move it) between the check and the
-- delete. A job still in its tenant's backlog (the record's `stream`, same hash tag)
-- is deleted from there. Every key is checked before the first write.
local bad = corrupt(foreign(KEYS[2], 'hash'))
if bad then return bad end
local entry = redis.call('HGET', KEYS[2], 'entry')
if not entry then return 'gone' end
local stream = redis.call('HGET', KEYS[2], 'stream') or KEYS[1]
if string.sub(stream, 1, #ARGV[2]) ~= ARGV[2] then
  return redis.error_reply('CORRUPT ' .. KEYS[2] .. ' names a stream outside its queue')
end
bad = corrupt(foreign(stream, 'stream'))
if bad then return bad end
if stream == KEYS[1] then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if #p > 0 then return 'running' end
end
if redis.call('XDEL', stream, entry) == 1 then
  redis.call('HSET', KEYS[2], 'state', 'cancelled')
  return 'cancelled'
end
return 'gone'
