-- locate_delayed.lua: one page of a scan that finds which jobs the delayed set holds,
-- for a submitter checking for jobs Redis lost.
--
-- KEYS[1]  the delayed set (ZSET of envelopes)
-- ARGV[1]  the rank the page starts at
-- ARGV[2]  the most members in the page
-- ARGV[3]  how many leading bytes of each envelope to return (enough for the job id)
-- Returns  {'ok', more (1 when members follow the page), prefix, ...}, or
--          {'wrongtype', type} when the key is not a sorted set.
--
-- Atomicity: each page is one script. Across pages ranks shift as members come and
-- go, so the scan can skip a member; the caller scans the set before and after the
-- job stream, so a job that moves between them is seen in one of the two, and a job
-- missed all the same is only enqueued again: results are stored once (SET NX).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {'ok', 0} end
if kind ~= 'zset' then return {'wrongtype', kind} end
local start = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local width = tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], start, start + count - 1)
local out = {'ok', 0}
for _, envelope in ipairs(members) do
  out[#out + 1] = string.sub(envelope, 1, width)
end
if #members == count then out[2] = 1 end
return out
