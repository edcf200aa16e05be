-- find_job.lua: one page of a search for one job, for `sluice result` / `sluice wait`
-- telling a queued, running or delayed job from a finished or unknown one.
--
-- KEYS[1]  a stream of envelopes (field `e`: the job stream or a tenant's backlog),
--          or the delayed set (ZSET of envelopes scored by due time, ms)
-- ARGV[1]  the stream's consumer group, or '' (a backlog; ignored for the delayed set)
-- ARGV[2]  where the page starts: a stream: '-' or '(' .. the last id read; the
--          delayed set: a rank
-- ARGV[3]  the most entries (members) in the page
-- ARGV[4]  the envelope head that names the job: the job id as postcard writes it,
--          which follows the format version byte (any version: every one this build
--          reads starts with the id, and ids are unique)
-- ARGV[5]  the oldest envelope format version the caller reads (a number)
-- ARGV[6]  the newest envelope format version the caller reads (a number); an
--          envelope whose first byte is outside them is not the job's
-- Returns  for a stream: {'found', entry id, envelope, holder, idle ms, deliveries}
--          (holder '' and 0, 0 when no worker holds the entry); for the delayed set:
--          {'found', due ms, envelope}; else {'next', where the next page starts, ''
--          when this page was the last}; {'wrongtype', type} when the key is neither.
--
-- Atomicity: read only; each page is one script, so what a found entry says (its
-- holder, its deliveries) is of one instant. Across pages the search is not atomic:
-- the caller looks in the order jobs move (delayed set, job stream, delayed set
-- again, then the result), so a job that moves while it looks is found where it
-- arrives.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {'next', ''} end
local count = tonumber(ARGV[3])
local prefix = ARGV[4]
local width = #prefix
local oldest, newest = tonumber(ARGV[5]), tonumber(ARGV[6])
-- Whether `envelope` is of a version the caller reads and names the job.
local function names_job(envelope)
  local version = string.byte(envelope, 1)
  return version ~= nil and version >= oldest and version <= newest
    and string.sub(envelope, 2, width + 1) == prefix
end
if kind == 'zset' then
  local start = tonumber(ARGV[2])
  local members = redis.call('ZRANGE', KEYS[1], start, start + count - 1, 'WITHSCORES')
  for i = 1, #members, 2 do
    if names_job(members[i]) then
      return {'found', members[i + 1], members[i]}
    end
  end
  if #members < 2 * count then return {'next', ''} end
  return {'next', tostring(start + count)}
end
if kind ~= 'stream' then return {'wrongtype', kind} end
local entries = redis.call('XRANGE', KEYS[1], ARGV[2], '+', 'COUNT', count)
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' and names_job(fields[i + 1]) then
      local holder, idle, deliveries = '', 0, 0
      if ARGV[1] ~= '' then
        local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
        -- No group (Redis lost it): nobody holds the entry.
        if type(rows) == 'table' and not rows.err and #rows > 0 then
          holder, idle, deliveries = rows[1][2], rows[1][3], rows[1][4]
        end
      end
      return {'found', entry[1], fields[i + 1], holder, idle, deliveries}
    end
  end
end
if #entries < count then return {'next', ''} end
return {'next', '(' .. entries[#entries][1]}
