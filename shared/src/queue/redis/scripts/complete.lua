-- complete.lua: stores the results of a batch of finished jobs and acknowledges and
-- removes their entries.
--
-- KEYS[1]      the job stream
-- KEYS[2]      the stats hash
-- KEYS[3]      the completion-notice stream
-- KEYS[3 + i]  the result key of the i-th job
-- ARGV[1]      consumer group
-- ARGV[2]      result TTL, ms
-- ARGV[3]      notice TTL, ms (notices older than this are trimmed)
-- then per job: entry id, job id, outcome kind, encoded result
-- Returns      per job: 1 if its result was stored, 0 if one already was (duplicate).
--
-- Atomicity: result, XACK/XDEL and counters change in one script: no entry is
-- acknowledged without its result, and none is counted without being acknowledged.
-- Idempotence: results are written with SET NX, so a duplicate delivery finishing
-- later (after a takeover) neither overwrites the first result nor counts twice.
local group, ttl, notice_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = #KEYS - 3
local ids, notice, stored = {}, {}, {}
local recorded = 0
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local entry, job, kind, result = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  ids[#ids + 1] = entry
  if redis.call('SET', KEYS[3 + i], result, 'NX', 'PX', ttl) then
    recorded = recorded + 1
    notice[#notice + 1] = job
    notice[#notice + 1] = kind
    stored[i] = 1
  else
    stored[i] = 0
  end
end
redis.call('XACK', KEYS[1], group, unpack(ids))
redis.call('XDEL', KEYS[1], unpack(ids))
if recorded > 0 then
  redis.call('HINCRBY', KEYS[2], 'completed', recorded)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[3], 'MINID', '~', now - notice_ttl, '*', unpack(notice))
  redis.call('PEXPIRE', KEYS[3], notice_ttl)
end
if recorded < n then
  redis.call('HINCRBY', KEYS[2], 'duplicates', n - recorded)
end
return stored
