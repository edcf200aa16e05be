-- artifact_put.lua: stores a key derived from a module (a compiled artifact, or why the
-- module does not compile for an engine) for at most the module's remaining lifetime,
-- and records it in the module's set of derived keys, which is deleted with the module.
--
-- KEYS[1]  the derived key (string: an artifact, or a compile refusal)
-- KEYS[2]  the module's bytes (only its lifetime is read)
-- KEYS[3]  the module's derived keys (set of key names)
-- ARGV[1]  the value
-- ARGV[2]  the longest lifetime, ms (the module's remaining lifetime when shorter)
-- Returns  1 when stored, 0 when the module is not stored (nothing is written).
--
-- Atomicity: the module's existence and lifetime are read and the key written in one
-- script, so a module deleted before it runs (module_rm.lua, module_del.lua) gets no
-- artifact, and one deleted after takes the artifact with it. The set's TTL is kept at
-- least the longest of its keys', so it never expires before a key it names. Type
-- checks come first: a foreign key fails the script, named, before any write.
local function expect(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('artifact key ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
  return nil
end
local e = expect(KEYS[1], 'string') or expect(KEYS[3], 'set')
if e then return e end
local module_ttl = redis.call('PTTL', KEYS[2])
if module_ttl == -2 then
  return 0
end
local ttl = tonumber(ARGV[2])
if module_ttl >= 0 and module_ttl <= ttl then
  if module_ttl < 1 then
    return 0
  end
  -- The module's own expiry, as an instant: PTTL and PX need not read the clock
  -- alike, and a relative copy could outlive the module by a millisecond.
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', redis.call('PEXPIRETIME', KEYS[2]))
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
redis.call('SADD', KEYS[3], KEYS[1])
local at = redis.call('PEXPIRETIME', KEYS[1])
-- The set lives at least as long as its newest artifact (-1: it had no TTL yet).
if redis.call('PEXPIRETIME', KEYS[3]) < at then
  redis.call('PEXPIREAT', KEYS[3], at)
end
return 1
