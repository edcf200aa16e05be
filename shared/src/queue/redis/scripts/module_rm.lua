-- module_rm.lua: a tenant lets go of a module (and of the alias it named it by). The
-- bytes are deleted when no tenant holds them any more, unless an operator stored
-- them without a lifetime.
--
-- KEYS[1]  the module's bytes
-- KEYS[2]  the module's holders
-- KEYS[3]  the tenant's held modules
-- KEYS[4]  the alias to delete (when ARGV[3] is 1)
-- KEYS[5]  the module's metadata (deleted with the bytes)
-- KEYS[6]  the module's derived keys (set of key names: artifacts, compile refusals;
--          they and the set are deleted with the bytes)
-- KEYS[7..] the members of KEYS[6] as the caller read them (SMEMBERS), declared so
--          that every key the script deletes is named in KEYS (Redis Cluster's rule)
-- ARGV[1]  the tenant
-- ARGV[2]  the module's hash, hex
-- ARGV[3]  1 when the module was named by an alias
-- Returns  {held, bytes deleted}: held is 1 when the tenant held the module or the
--          alias; 0 means there was nothing of the tenant's to delete. {-1} when
--          KEYS[6] holds a member not declared in KEYS[7..] (one was added since the
--          caller read it): nothing is written; read again and retry.
--
-- Atomicity: the holder count is read and the bytes deleted in one script, so a
-- concurrent upload of the same bytes by another tenant either lands before (and
-- keeps them) or after (and stores them again). Type checks come first. The derived
-- keys go with the bytes, and artifact_put.lua stores nothing for a module that is
-- gone, so no artifact outlives its module. Every member of the set is checked to be
-- declared before any write, so a key added since the caller's read is never left
-- behind.
local function expect(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('module key ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
  return nil
end
local e = expect(KEYS[1], 'string') or expect(KEYS[2], 'set') or expect(KEYS[3], 'zset')
  or expect(KEYS[6], 'set')
if e then return e end
local declared = {}
for i = 7, #KEYS do declared[KEYS[i]] = true end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  if not declared[key] then return {-1} end
end
local held = 0
if ARGV[3] == '1' then
  e = expect(KEYS[4], 'string')
  if e then return e end
  held = held + redis.call('DEL', KEYS[4])
end
held = held + redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
local deleted = 0
if redis.call('SCARD', KEYS[2]) == 0 and redis.call('PTTL', KEYS[1]) >= 0 then
  deleted = redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2], KEYS[5])
  for i = 7, #KEYS do
    if redis.call('SISMEMBER', KEYS[6], KEYS[i]) == 1 then
      redis.call('DEL', KEYS[i])
    end
  end
  redis.call('DEL', KEYS[6])
end
if held > 0 then held = 1 end
return {held, deleted}
