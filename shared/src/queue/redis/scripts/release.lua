-- release.lua: gives a claimed job back at once (a worker shutting down), without
-- counting an attempt.
--
-- KEYS[1]  the job stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the lease holder)
-- ARGV[3]  entry id
-- ARGV[4]  the delivery count the holder was given
-- Returns  1, or 0 when the lease was lost.
--
-- Atomicity: the entry is acknowledged, removed and re-added as a fresh entry in one
-- script, so the job is never absent; as a new entry it is delivered to the next
-- claimer at once instead of waiting out the visibility timeout.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if #entry == 1 then
  redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
end
return 1
