-- module_del.lua: the operator's delete of a module (`sluice module rm <hash>`): its
-- bytes, holders and metadata, and every key derived from it (artifacts, compile
-- refusals), whoever holds it.
--
-- KEYS[1]  the module's bytes
-- KEYS[2]  the module's holders
-- KEYS[3]  the module's metadata
-- KEYS[4]  the module's derived keys (set of key names)
-- KEYS[5..] the members of KEYS[4] as the caller read them (SMEMBERS), declared so
--          that every key the script deletes is named in KEYS (Redis Cluster's rule)
-- Returns  how many of KEYS[1..3] existed (0: nothing was stored); -1 when KEYS[4]
--          holds a member not declared in KEYS[5..] (added since the caller read
--          it): nothing is deleted; read again and retry.
--
-- Atomicity: the module and its derived keys go in one script, and artifact_put.lua
-- stores nothing for a module that is gone, so no artifact outlives its module. The
-- set is type-checked, and every member checked to be declared, before anything is
-- deleted; its members are keys of this queue (same hash tag), written only by
-- artifact_put.lua and artifact_get.lua.
local kind = redis.call('TYPE', KEYS[4]).ok
if kind ~= 'none' and kind ~= 'set' then
  return redis.error_reply('module key ' .. KEYS[4] .. ' is a ' .. kind .. ', not a set')
end
local declared = {}
for i = 5, #KEYS do declared[KEYS[i]] = true end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if not declared[key] then return -1 end
end
for i = 5, #KEYS do
  if redis.call('SISMEMBER', KEYS[4], KEYS[i]) == 1 then
    redis.call('DEL', KEYS[i])
  end
end
redis.call('DEL', KEYS[4])
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
