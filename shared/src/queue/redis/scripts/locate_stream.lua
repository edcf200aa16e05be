-- locate_stream.lua: one page of a scan that finds which jobs a stream holds (the
-- job stream or a tenant's backlog), for a submitter checking for jobs Redis lost.
--
-- KEYS[1]  a stream of envelopes (field `e`)
-- ARGV[1]  its consumer group, or '' for a stream without one (a backlog)
-- ARGV[2]  where the page starts: '-' for the beginning, else '(' .. the last id read
-- ARGV[3]  the most entries in the page
-- ARGV[4]  how many leading bytes of each envelope to return (enough for the job id)
-- Returns  {'ok', last id read, prefix, pending, prefix, pending, ...}, pending being
--          1 when a worker holds the entry; last id '' when the page was the last;
--          {'wrongtype', type} when the key is not a stream (it names no job).
--
-- Atomicity: each page is one script, so an entry is reported with its pending state
-- as of one instant. Across pages the scan is not atomic, and need not be: entries
-- only ever join a stream at its end, so a job moved back onto it while the scan runs
-- (released, promoted, dispatched) is found by the pages still to come, and a job
-- the scan misses because it moved elsewhere is found where it went by the caller's
-- later steps (delayed set, results). A job missed all the same is enqueued again,
-- which costs a duplicate run and nothing else: results are stored once (SET NX).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {'ok', ''} end
if kind ~= 'stream' then return {'wrongtype', kind} end
local count = tonumber(ARGV[3])
local width = tonumber(ARGV[4])
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', count)
local out = {'ok', ''}
if #entries == 0 then return out end
local pending = {}
if ARGV[1] ~= '' then
  local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1],
    entries[1][1], entries[#entries][1], #entries)
  -- No group (Redis lost it): nothing is pending.
  if type(rows) == 'table' and not rows.err then
    for _, row in ipairs(rows) do pending[row[1]] = true end
  end
end
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local envelope = ''
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then envelope = fields[i + 1] end
  end
  out[#out + 1] = string.sub(envelope, 1, width)
  out[#out + 1] = pending[entry[1]] and 1 or 0
end
if #entries == count then out[2] = entries[#entries][1] end
return out
