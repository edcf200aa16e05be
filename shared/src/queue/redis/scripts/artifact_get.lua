-- artifact_get.lua: reads a module's artifact and starts its lifetime again, for at
-- most the module's remaining lifetime.
--
-- KEYS[1]  the artifact (string: integrity tag + artifact)
-- KEYS[2]  the module's bytes (only its lifetime is read)
-- KEYS[3]  the module's derived keys (set of key names)
-- ARGV[1]  the longest lifetime, ms (the module's remaining lifetime when shorter)
-- Returns  the artifact, or nil when there is none (or its module is gone).
--
-- Atomicity: the module's lifetime is read and the artifact's set from it in one
-- script, so an artifact never outlives its module. An artifact whose module is gone
-- (stored before artifacts were tied to their module) is deleted; one missing from the
-- set is added, and the set's TTL kept at least the artifact's. A foreign key fails the
-- script, named, before any write.
local function expect(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('artifact key ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
  return nil
end
local e = expect(KEYS[1], 'string') or expect(KEYS[3], 'set')
if e then return e end
local value = redis.call('GET', KEYS[1])
if not value then
  return false
end
local module_ttl = redis.call('PTTL', KEYS[2])
if module_ttl == -2 then
  redis.call('DEL', KEYS[1])
  return false
end
local ttl = tonumber(ARGV[1])
if module_ttl >= 0 and module_ttl <= ttl then
  -- The module's own expiry, as an instant: PTTL and PEXPIRE need not read the clock
  -- alike, and a relative copy could outlive the module by a millisecond.
  redis.call('PEXPIREAT', KEYS[1], redis.call('PEXPIRETIME', KEYS[2]))
else
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('SADD', KEYS[3], KEYS[1])
local at = redis.call('PEXPIRETIME', KEYS[1])
-- The set lives at least as long as its newest artifact (-1: it had no TTL yet).
if redis.call('PEXPIRETIME', KEYS[3]) < at then
  redis.call('PEXPIREAT', KEYS[3], at)
end
return value
