-- unhold.lua: gives up a role (see hold.lua) if the caller holds it, so a process
-- that stops cleanly hands the role over at once instead of after its hold expires.
-- Also releases an artifact's compile lock (artifacts.rs: the caller's name is the
-- lock's token), when its compile is done or failed.
--
-- KEYS[1]  the role's key
-- ARGV[1]  the caller's name
-- Returns  1 if the caller held the role (the key is deleted), else 0 (nothing changes).
--
-- Atomicity: the check and the delete happen together, so a holder never deletes a
-- hold another process took after its own expired.
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
