-- retry.lua: puts a failed job back, to run again after a delay.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the delayed set
-- KEYS[3]  the stats hash
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the lease holder)
-- ARGV[3]  entry id
-- ARGV[4]  the delivery count the holder was given
-- ARGV[5]  delay, ms
-- ARGV[6]  the envelope to run next (its attempt count advanced)
-- Returns  1, or 0 when the lease was lost (then nothing changes).
--
-- Atomicity: the entry leaves the stream and the next envelope enters the delayed set
-- in one script: the job is never in both, nor in neither.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[6])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
return 1
