-- takeover.lua: takes over entries whose lease expired and reports each one's
-- delivery count.
--
-- KEYS[1]  the job stream
-- ARGV[1]  consumer group
-- ARGV[2]  consumer (the new holder)
-- ARGV[3]  min idle time, ms (the lease: only entries nobody renewed for that long)
-- ARGV[4]  scan cursor (`0-0` from the start)
-- ARGV[5]  the most entries to take
-- Returns  {next cursor, {{entry id, fields (empty if the entry was deleted), delivery
--          count}, …}}; an error 'CORRUPT <key> …' when the job stream is not a stream.
--
-- Atomicity: XAUTOCLAIM raises each entry's delivery count but does not report it;
-- reading the counts in the same script means the entries taken over and their counts
-- come back together or not at all. A reply lost on the way leaves the entries pending
-- to this consumer, to be taken over again after another lease.
local bad = corrupt(foreign(KEYS[1], 'stream'))
if bad then return bad end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', tonumber(ARGV[5]))
local out = {}
for _, e in ipairs(r[2]) do
  local id = e[1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local count = 1
  if #p == 1 then count = p[1][4] end
  out[#out + 1] = {id, e[2] or {}, count}
end
return {r[1], out}
