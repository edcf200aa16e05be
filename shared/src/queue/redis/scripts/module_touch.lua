-- module_touch.lua: a job is about to use a module: its lifetime starts again.
--
-- KEYS[1]  the module's bytes
-- KEYS[2]  the module's holders
-- KEYS[3]  the using tenant's held modules
-- KEYS[4]  the alias the job named the module by ("" key name when by hash)
-- KEYS[5]  the module's metadata (follows the bytes' lifetime)
-- ARGV[1]  lifetime, ms
-- ARGV[2]  the module's hash, hex
-- Returns  1 when the module is stored, 0 when it is not.
--
-- Atomicity: only expiries move, and only forward; a module stored without a lifetime
-- keeps none. Touching a deleted module writes nothing.
local ttl = tonumber(ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return 0
end
if pttl >= 0 and pttl < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if redis.call('TYPE', KEYS[2]).ok == 'set' then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  if redis.call('TYPE', KEYS[5]).ok == 'string' then
    redis.call('PEXPIRE', KEYS[5], ttl)
  end
end
if redis.call('TYPE', KEYS[3]).ok == 'zset' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], 'XX', 'GT', now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if redis.call('TYPE', KEYS[4]).ok == 'string' then
  local apttl = redis.call('PTTL', KEYS[4])
  if apttl >= 0 and apttl < ttl then
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end
return 1
