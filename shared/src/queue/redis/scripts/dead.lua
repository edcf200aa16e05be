-- dead.lua: moves a job to the dead letters with its reason, and records its final
-- result. Counts it in the stats hash: `dead`, `dead:<outcome kind>` and `failed` (a
-- dead letter's result is never a success, and dead-lettering is where a failed job
-- ends; a dead letter retried with `sluice dlq retry` that dies again counts again).
--
-- KEYS[1]  the job stream
-- KEYS[2]  the dead-letter stream
-- KEYS[3]  the stats hash
-- KEYS[4]  the completion-notice stream
-- KEYS[5]  the job's result key (the stats hash when the job id is unknown)
-- ARGV[1]  consumer group
-- ARGV[2]  entry id
-- ARGV[3]  dead-letter TTL, ms (older dead letters are trimmed; never by count)
-- ARGV[4]  result TTL, ms
-- ARGV[5]  notice TTL, ms
-- ARGV[6]  job id, or '' when the envelope did not decode
-- ARGV[7]  outcome kind
-- ARGV[8]  reason
-- ARGV[9]  attempts
-- ARGV[10] encoded result
-- ARGV[11] consumer (the lease holder)
-- ARGV[12] the delivery count the holder was given
-- ARGV[13] the queue's key prefix (`sluice:{q}:`): the job's record and batch hash
--          are ARGV[13] .. 'job:' .. id and ARGV[13] .. 'batch:' .. id (same slot)
-- Returns  1 moved; 0 the lease was lost (nothing changes); 2 the job already has a
--          result (a stale holder's success was stored): the entry is removed and
--          counted as a duplicate, and no dead letter is written. An error
--          'CORRUPT <key> …' (nothing changes) when a key it writes is corrupt.
--
-- Ownership: only the current holder (as in owner.lua) gives a job up; a job with a
-- stored result is finished and is never dead-lettered.
--
-- Atomicity: every key it must write is checked before the first write (the notice
-- stream is only written when it is a stream or absent); then the dead letter (with
-- the original envelope, so it can be retried), the result and the notice are written
-- before the entry is acknowledged and removed, and the counters follow: a failure
-- can leave the job in two places, never in none.
local job, kind = ARGV[6], ARGV[7]
local batch, problem = nil, nil
if job ~= '' then batch, problem = batch_of(ARGV[13], job, 'n:' .. kind) end
local bad = corrupt(foreign(KEYS[1], 'stream'), foreign(KEYS[2], 'stream'),
  foreign(KEYS[3], 'hash'),
  not_counter(KEYS[3], 'dead'), not_counter(KEYS[3], 'duplicates'),
  not_counter(KEYS[3], 'dead:' .. kind), not_counter(KEYS[3], 'failed'),
  job ~= '' and foreign(KEYS[5], 'string') or nil, problem)
if bad then return bad end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[11] or tostring(p[1][4]) ~= ARGV[12] then return 0 end
if job ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return 2
end
local envelope = ''
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entry == 1 then
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then envelope = fields[i + 1] end
  end
end
local now = now_ms()
redis.call('XADD', KEYS[2], 'MINID', '~', now - tonumber(ARGV[3]), '*',
  'entry', ARGV[2], 'job', job, 'kind', kind, 'reason', ARGV[8],
  'attempts', ARGV[9], 'e', envelope)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if job ~= '' then
  redis.call('SET', KEYS[5], ARGV[10], 'PX', ARGV[4])
  -- Not gated on the `owned` flag as complete.lua is: dead letters are rare, so the
  -- TYPE a job without a batch costs here is nothing measured, and a record is noted
  -- even when the flag is missing (deleted by hand, evicted).
  count_outcome(ARGV[13], job, batch, kind, 1, ARGV[4])
  -- A notice only wakes followers early: a foreign notice key costs the notice, not
  -- the dead letter.
  if not foreign(KEYS[4], 'stream') then
    redis.call('XADD', KEYS[4], 'MINID', '~', now - tonumber(ARGV[5]), '*', job, kind)
    redis.call('PEXPIRE', KEYS[4], ARGV[5])
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'dead', 1)
redis.call('HINCRBY', KEYS[3], 'dead:' .. kind, 1)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
return 1
