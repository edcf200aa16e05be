-- promote.lua: moves delayed jobs that are due onto the job stream.
--
-- KEYS[1]  the delayed set (ZSET: score = due time in ms on the server's clock,
--          member = envelope)
-- KEYS[2]  the job stream
-- ARGV[1]  the most jobs to move in one call
-- Returns  how many were moved.
--
-- Atomicity: the read, XADD and ZREM happen in one script, so a job is on exactly one
-- of the two keys at every moment; two workers promoting at once cannot both move it.
-- "Due" is judged by the server's TIME, so worker clocks do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, envelope in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'e', envelope)
  redis.call('ZREM', KEYS[1], envelope)
end
return #due
