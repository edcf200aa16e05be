-- owner.lua: renews a lease (restarts the entry's idle clock) if the caller still
-- holds it.
--
-- KEYS[1]  the job stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the lease holder)
-- ARGV[3]  entry id
-- ARGV[4]  the delivery count the holder was given
-- Returns  1 when renewed, 0 when the lease was lost (taken over, finished or gone);
--          an error 'CORRUPT <key> …' when the job stream is not a stream.
--
-- Atomicity: the ownership check (XPENDING) and the renewal (XCLAIM ... JUSTID, which
-- resets idle time without counting a delivery) run together, so a lease taken over
-- by another worker between the two can never be renewed by its old holder. The
-- renewal is its only write.
local bad = corrupt(foreign(KEYS[1], 'stream'))
if bad then return bad end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
