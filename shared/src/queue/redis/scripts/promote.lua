-- promote.lua: moves delayed jobs that are due back into line: a job of the HTTP
-- service (one with a job record naming its tenant) into its tenant's backlog, to be
-- admitted again by the dispatcher like a new job; any other job onto the job stream
-- (its record, if it has one, then names its new entry there). A job whose record
-- says cancelled (cancelled while it waited, see cancel_job.lua) is dropped instead.
--
-- KEYS[1]  the delayed set (ZSET: score = due time in ms on the server's clock,
--          member = envelope)
-- KEYS[2]  the job stream; it must end in `jobs`: what comes before is the queue's key
--          prefix, under which the script also reads and writes (same hash tag, so
--          the same slot) `job:<id>` (records), `backlog:<tenant>`, `backlogs` and
--          `admitted` (see dispatch.lua)
-- ARGV[1]  the most jobs to move in one call
-- ARGV[2]  the result TTL, ms: a job record moved back into its backlog lives that
--          long again from now, so a job that waits long in line keeps its record
-- ARGV[3]  the oldest envelope format version this build reads
--          (`codec::OLDEST_FORMAT_VERSION`)
-- ARGV[4]  the envelope format version this build writes (`codec::FORMAT_VERSION`);
--          every version from ARGV[3] to ARGV[4] starts with the job id
-- Returns  how many were moved (or dropped as cancelled); an error naming the key if KEYS[1] is not a sorted set
--          or KEYS[2] not a stream.
--
-- The job id is read from the envelope's fixed head: a format version from ARGV[3] to
-- ARGV[4], then the postcard encoding of the UUID (length byte 16, then its 16
-- bytes). An envelope that
-- does not start that way goes to the job stream, where a worker dead-letters it.
--
-- Atomicity: every key a write could fail on is type-checked before the script's
-- first write (and Redis refuses an out-of-memory write only as a script's first), so
-- a call either fails before changing anything or moves every job it read. A
-- wrong-typed backlog, backlogs set or record sends that job to the job stream
-- instead (it still runs, outside admission) rather than failing the call; a
-- wrong-typed admitted hash is left alone (the dispatcher reports and repairs it). Each
-- job is added to its destination before it is removed from the delayed set, and in
-- one script, so it is on exactly one of the keys at every moment; two workers
-- promoting at once cannot both move it. "Due" is judged by the server's TIME, so
-- worker clocks do not matter.
local function kind(key) return redis.call('TYPE', key)['ok'] end
local delayed = kind(KEYS[1])
if delayed == 'none' then return 0 end
if delayed ~= 'zset' then
  return redis.error_reply('WRONGTYPE delayed set ' .. KEYS[1] .. ' is a ' .. delayed)
end
local jobs = kind(KEYS[2])
if jobs ~= 'stream' and jobs ~= 'none' then
  return redis.error_reply('WRONGTYPE job stream ' .. KEYS[2] .. ' is a ' .. jobs)
end
local prefix = nil
if string.sub(KEYS[2], -4) == 'jobs' then prefix = string.sub(KEYS[2], 1, -5) end

local oldest, newest = tonumber(ARGV[3]), tonumber(ARGV[4])
local function job_id(envelope)
  if #envelope < 18 or string.byte(envelope, 1) < oldest or string.byte(envelope, 1) > newest
      or string.byte(envelope, 2) ~= 16 then
    return nil
  end
  local hex = string.format(string.rep('%02x', 16), string.byte(envelope, 3, 18))
  return string.sub(hex, 1, 8) .. '-' .. string.sub(hex, 9, 12) .. '-' ..
    string.sub(hex, 13, 16) .. '-' .. string.sub(hex, 17, 20) .. '-' .. string.sub(hex, 21, 32)
end

-- The job's record (a hash), or nil.
local function record_of(id)
  if not prefix or not id then return nil end
  local record = prefix .. 'job:' .. id
  if kind(record) ~= 'hash' then return nil end
  return record
end

-- Where an API job goes back in line: its tenant's backlog, or nil.
local function backlog_of(record)
  if not record then return nil end
  local tenant = redis.call('HGET', record, 'tenant')
  if not tenant or tenant == '' then return nil end
  local backlog = prefix .. 'backlog:' .. tenant
  local b = kind(backlog)
  if b ~= 'stream' and b ~= 'none' then return nil end
  local s = kind(prefix .. 'backlogs')
  if s ~= 'set' and s ~= 'none' then return nil end
  return backlog, tenant
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, envelope in ipairs(due) do
  local id = job_id(envelope)
  local record = record_of(id)
  local backlog, tenant = backlog_of(record)
  if record and redis.call('HGET', record, 'state') == 'cancelled' then
    -- Cancelled while it waited (cancel_job.lua): dropped, never run, and no longer
    -- counted against its tenant's concurrency.
    if id and kind(prefix .. 'admitted') == 'hash' then
      redis.call('HDEL', prefix .. 'admitted', id)
    end
  elseif backlog then
    -- Back in its backlog the job no longer counts against its tenant's concurrency.
    if kind(prefix .. 'admitted') == 'hash' then
      redis.call('HDEL', prefix .. 'admitted', id)
    end
    local entry = redis.call('XADD', backlog, '*', 'e', envelope, 'j', id)
    redis.call('SADD', prefix .. 'backlogs', tenant)
    redis.call('HSET', record, 'stream', backlog, 'entry', entry)
    if ARGV[2] then redis.call('PEXPIRE', record, ARGV[2]) end
  else
    local entry = redis.call('XADD', KEYS[2], '*', 'e', envelope)
    -- The record follows the job, so a cancel finds it where the record says.
    if record then redis.call('HSET', record, 'stream', KEYS[2], 'entry', entry) end
  end
  redis.call('ZREM', KEYS[1], envelope)
end
return #due
