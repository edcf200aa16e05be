-- dead.lua: moves a job to the dead letters with its reason, and records its final
-- result.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the dead-letter stream
-- KEYS[3]  the stats hash
-- KEYS[4]  the completion-notice stream
-- KEYS[5]  the job's result key (any key of this queue when the job id is unknown)
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
-- Returns  1 when the entry was moved, 0 when it was already gone (a duplicate).
--
-- Atomicity: the dead letter (with the original envelope, so it can be retried), the
-- result, the acknowledgement and the counters change together.
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #entry == 0 then return 0 end
local envelope = ''
local fields = entry[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'e' then envelope = fields[i + 1] end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MINID', '~', now - tonumber(ARGV[3]), '*',
  'entry', ARGV[2], 'job', ARGV[6], 'kind', ARGV[7], 'reason', ARGV[8],
  'attempts', ARGV[9], 'e', envelope)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'dead', 1)
if ARGV[6] ~= '' and redis.call('SET', KEYS[5], ARGV[10], 'NX', 'PX', ARGV[4]) then
  redis.call('XADD', KEYS[4], 'MINID', '~', now - tonumber(ARGV[5]), '*', ARGV[6], ARGV[7])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return 1
