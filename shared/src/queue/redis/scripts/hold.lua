-- hold.lua: takes or renews a role held by one process at a time (the dispatcher).
--
-- KEYS[1]  the role's key (a string: the holder's name, always with a TTL)
-- ARGV[1]  the caller's name
-- ARGV[2]  how long the hold lasts, ms
-- Returns  {1, ARGV[1]}  the caller holds the role now (taken or renewed);
--          {0, holder}   another process holds it;
--          {2, what}     the key was not a live hold (no TTL, a TTL longer than a
--                        hold, or not a string): it was given a TTL of one hold, so it
--                        expires within ARGV[2] ms unless a live holder renews it,
--                        and `what` says what was found.
--
-- Atomicity: the check and the take (or renewal) happen together, so two processes
-- can never both believe they hold the role; a holder that dies loses it when the
-- hold expires. A hold always expires: every path that leaves the key in place leaves
-- it with a TTL of at most one hold, so a key set by hand or by a foreign client
-- without a TTL cannot keep the role forever. It is not taken over at once, because a
-- live holder that renews within one hold keeps it (two dispatchers are worse than a
-- pause).
local hold = tonumber(ARGV[2])
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', hold)
  return {1, ARGV[1]}
end
if kind ~= 'string' then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 or ttl > hold then redis.call('PEXPIRE', KEYS[1], hold) end
  return {2, 'a ' .. kind}
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], hold)
  return {1, holder}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > hold then
  redis.call('PEXPIRE', KEYS[1], hold)
  local what = 'no expiry'
  if ttl > hold then what = 'an expiry of ' .. ttl .. ' ms' end
  return {2, string.sub(holder, 1, 128) .. ' with ' .. what}
end
return {0, string.sub(holder, 1, 128)}
