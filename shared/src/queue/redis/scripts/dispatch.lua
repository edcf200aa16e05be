-- dispatch.lua: moves a tenant's oldest backlog jobs onto the shared job stream.
--
-- KEYS[1]  the job stream
-- KEYS[2]  the tenant's backlog stream (fields: e = envelope, j = job id)
-- KEYS[3]  the set of tenants with a non-empty backlog
-- ARGV[1]  the tenant
-- ARGV[2]  the prefix of job-record keys (the record is ARGV[2] .. job id; same hash
--          tag, so the same slot as the declared keys)
-- ARGV[3]  the most jobs to move
-- Returns  the ids of the jobs moved.
--
-- Atomicity: each job leaves the backlog, enters the stream and has its record point
-- at its new entry in one script, so it is always in exactly one place and a cancel
-- always finds it where its record says.
local entries = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[3]))
local moved = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local envelope, job = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then envelope = fields[i + 1] end
    if fields[i] == 'j' then job = fields[i + 1] end
  end
  redis.call('XDEL', KEYS[2], entry[1])
  if envelope then
    local id = redis.call('XADD', KEYS[1], '*', 'e', envelope)
    if job then
      -- Only a record that still exists is pointed at the new entry: recreating an
      -- expired one would leave a key without owner or TTL behind.
      if redis.call('EXISTS', ARGV[2] .. job) == 1 then
        redis.call('HSET', ARGV[2] .. job, 'stream', KEYS[1], 'entry', id)
      end
      moved[#moved + 1] = job
    end
  end
end
if redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return moved
