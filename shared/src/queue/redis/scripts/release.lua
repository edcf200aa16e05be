-- release.lua: gives a claimed job back at once (a worker shutting down, or giving up a
-- run that is overdue), as a fresh entry that the next claimer gets at once instead of
-- after the visibility timeout.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the job's record (hash `job:<id>`; the job stream again when the job id
--          is unknown)
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the lease holder)
-- ARGV[3]  entry id
-- ARGV[4]  the delivery count the holder was given
-- ARGV[5]  optional: the envelope to put back, its attempt count set by the caller to
--          the attempts made so far (this delivery counted or not). A fresh entry starts
--          at delivery count 0, so without it the count would restart; absent (an
--          envelope that did not decode) the entry's own fields are put back.
-- Returns  1, or 0 when the lease was lost (then nothing changes).
--
-- Atomicity: the ownership check and the move run in one script. The fresh entry is
-- added before the old one is acknowledged and deleted, so a failure part-way (Redis
-- does not roll back a script) leaves the job in the stream (at worst twice, where the
-- second copy's result is dropped as a duplicate), never nowhere. An entry already
-- deleted while pending (cancelled) is only acknowledged: it does not come back.
-- A record that is a hash and names the old entry on this stream is pointed at the
-- new one in the same script, so a cancel finds the queued job where its record says
-- (a record naming another copy, or none, is left alone; nothing is recreated).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
local fresh
if #entry == 1 then
  if ARGV[5] then
    fresh = redis.call('XADD', KEYS[1], '*', 'e', ARGV[5])
  else
    fresh = redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
  end
  if KEYS[2] ~= KEYS[1] and redis.call('TYPE', KEYS[2])['ok'] == 'hash'
    and redis.call('HGET', KEYS[2], 'entry') == ARGV[3]
    and (redis.call('HGET', KEYS[2], 'stream') or KEYS[1]) == KEYS[1] then
    redis.call('HSET', KEYS[2], 'entry', fresh)
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
