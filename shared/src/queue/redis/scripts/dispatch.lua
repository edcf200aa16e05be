-- dispatch.lua: admits a tenant's oldest backlog jobs onto the shared job stream.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the tenant's backlog stream (fields: e = envelope, j = job id)
-- KEYS[3]  the set of tenants with a non-empty backlog
-- KEYS[4]  the admitted hash (job id -> tenant: API jobs admitted and not yet settled)
-- KEYS[5]  the dispatcher role's key (hold.lua)
-- ARGV[1]  the tenant
-- ARGV[2]  the prefix of job-record keys (the record is ARGV[2] .. job id; same hash
--          tag, so the same slot as the declared keys)
-- ARGV[3]  the most jobs to move
-- ARGV[4]  the caller's name as dispatcher
-- ARGV[5]  the result TTL, ms: an admitted job's record lives that long again from
--          now (records expire a result TTL after submission; a job that waited long
--          in its backlog would otherwise lose its record, and with it its owner)
-- Returns  {'ok', id, ...}     the ids of the jobs moved (maybe none);
--          {'notholder'}       the caller does not hold the dispatcher role: nothing
--                              changes (a dispatcher that stalled past its hold cannot
--                              admit beside its successor);
--          {'corrupt', key, type}  a key this script writes has the wrong type:
--                              nothing changes.
--
-- Atomicity: every key a write could fail on is type-checked before the script's
-- first write (and Redis refuses an out-of-memory write only as a script's first), so
-- a call either changes nothing or moves every job it read. Each job enters the stream
-- before it leaves the backlog, and in one script: it is always in exactly one place.
-- With it, it is counted in the admitted hash and its record points at its new entry,
-- so a cancel always finds it where its record says, and a dispatcher that takes over
-- finds every admitted job counted.
local held = redis.call('TYPE', KEYS[5])['ok'] == 'string' and redis.call('GET', KEYS[5]) == ARGV[4]
if not held then return {'notholder'} end
local function kind(key) return redis.call('TYPE', key)['ok'] end
local backlog = kind(KEYS[2])
local tenants_ok = ({set = true, none = true})[kind(KEYS[3])]
if backlog == 'none' then
  if tenants_ok then redis.call('SREM', KEYS[3], ARGV[1]) end
  return {'ok'}
end
if backlog ~= 'stream' then return {'corrupt', KEYS[2], backlog} end
local jobs = kind(KEYS[1])
if jobs ~= 'stream' and jobs ~= 'none' then return {'corrupt', KEYS[1], jobs} end
local admitted = kind(KEYS[4])
if admitted ~= 'hash' and admitted ~= 'none' then return {'corrupt', KEYS[4], admitted} end

local entries = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[3]))
local moved = {'ok'}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local envelope, job = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then envelope = fields[i + 1] end
    if fields[i] == 'j' then job = fields[i + 1] end
  end
  if envelope then
    local id = redis.call('XADD', KEYS[1], '*', 'e', envelope)
    if job then
      redis.call('HSET', KEYS[4], job, ARGV[1])
      -- Only a record that still exists is pointed at the new entry: recreating an
      -- expired one would leave a key without owner or TTL behind.
      if kind(ARGV[2] .. job) == 'hash' then
        redis.call('HSET', ARGV[2] .. job, 'stream', KEYS[1], 'entry', id)
        if ARGV[5] then redis.call('PEXPIRE', ARGV[2] .. job, ARGV[5]) end
      end
      moved[#moved + 1] = job
    end
  elseif #fields > 0 then
    -- Not a job envelope: passed on as it is, so a worker dead-letters it with its
    -- reason where an operator looks, instead of it vanishing here.
    redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  redis.call('XDEL', KEYS[2], entry[1])
end
if tenants_ok and redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return moved
