-- module_meta.lua: records the metadata of a module stored before metadata was
-- recorded on upload (computed by a submitter from the verified bytes).
--
-- KEYS[1]  the module's bytes
-- KEYS[2]  the module's metadata (string, JSON)
-- ARGV[1]  the metadata
-- Returns  1 when recorded, 0 when the module is not stored (nothing is written).
--
-- Atomicity: the bytes' lifetime is read and the metadata written with it in one
-- script, so the metadata never outlives the bytes (an operator's module, with no
-- lifetime, gives its metadata none). A wrong-typed metadata key fails the script,
-- naming it, before any write.
local kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'none' and kind ~= 'string' then
  return redis.error_reply('module key ' .. KEYS[2] .. ' is a ' .. kind .. ', not a string')
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return 0
end
if pttl > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', pttl)
else
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
