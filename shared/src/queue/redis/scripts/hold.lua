-- hold.lua: takes or renews a role held by one process at a time (the dispatcher).
--
-- KEYS[1]  the role's key
-- ARGV[1]  the holder's name
-- ARGV[2]  how long the hold lasts, ms
-- Returns  1 when the caller holds the role now, 0 when another process does.
--
-- Atomicity: the check and the take (or renewal) happen together, so two processes
-- can never both believe they hold the role; a holder that dies loses it when the
-- hold expires.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
