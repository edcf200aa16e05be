-- retry.lua: puts a failed job back, to run again after a delay.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the delayed set
-- KEYS[3]  the stats hash
-- KEYS[4]  the job's result key
-- KEYS[5]  the job's record (hash; absent for a job submitted without one)
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the lease holder)
-- ARGV[3]  entry id
-- ARGV[4]  the delivery count the holder was given
-- ARGV[5]  delay, ms
-- ARGV[6]  the envelope to run next (its attempt count advanced)
-- ARGV[7]  that envelope's attempt count (runs already made), noted as the record's
--          `attempts` when the job has a record (GET /v1/jobs/{id} reads it there
--          instead of searching the delayed set)
-- Returns  1, or 0 when the lease was lost (then nothing changes); 2 when the job
--          already has a result (another copy of it succeeded or was dead-lettered,
--          e.g. after a takeover or a recovery re-enqueue): the entry is removed and
--          counted as a duplicate, and nothing is scheduled. An error
--          'CORRUPT <key> …' (nothing changes) when a key it writes is corrupt.
--
-- Ownership: only the current holder (same consumer, same delivery count, as in
-- owner.lua) may retry; a stale holder's failure says nothing about the new run. A
-- job with a stored result is finished: a duplicate copy failing afterwards must not
-- run it again (as in dead.lua).
--
-- Atomicity: every key is checked before the first write; then the next envelope
-- enters the delayed set before the entry leaves the stream, and the counter follows.
-- Should a write still fail, the job is in both places (it runs twice), never in
-- neither.
local bad = corrupt(foreign(KEYS[1], 'stream'), foreign(KEYS[2], 'zset'),
  foreign(KEYS[3], 'hash'), not_counter(KEYS[3], 'retried'),
  not_counter(KEYS[3], 'duplicates'), foreign(KEYS[4], 'string'),
  foreign(KEYS[5], 'hash'))
if bad then return bad end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
  return 2
end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[5]), ARGV[6])
-- Only an existing record is noted: none is created (it would have no TTL).
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSET', KEYS[5], 'attempts', ARGV[7])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
return 1
