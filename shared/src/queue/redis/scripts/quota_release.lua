-- quota_release.lua: gives back stored bytes a worker counted ahead (credit) and will
-- not use, by decrementing the time bucket they were counted in, while that bucket is
-- still in the window. Never takes a bucket below 0 (a bucket that has fewer bytes than
-- asked, because it expired and was counted again, loses only what it has).
--
-- KEYS[1]  the tenant's usage hash (field: bucket index, value: bytes reserved in it;
--          see quota_stored.lua)
-- ARGV[1]  bytes to give back
-- ARGV[2]  the bucket index they were counted in (as quota_stored.lua answered it)
-- ARGV[3]  bucket length, ms
-- ARGV[4]  buckets in the window
-- Returns  the bytes given back (0 when the bucket left the window or holds nothing).
--
-- Atomicity: the read and the decrement run as one script, so a concurrent reservation
-- or release of the same tenant cannot interleave and leave a bucket below 0. A
-- wrong-typed key fails the script before any write, with the key named.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  return 0
end
if kind ~= 'hash' then
  return redis.error_reply('quota key ' .. KEYS[1] .. ' is a ' .. kind .. ', not a hash')
end
local want = tonumber(ARGV[1])
local b = tonumber(ARGV[2])
local len = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
if want == nil or b == nil or want <= 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = math.floor(now / len)
if b < bucket - window + 1 or b > bucket then
  return 0
end
local field = tostring(b)
local n = tonumber(redis.call('HGET', KEYS[1], field) or '0') or 0
local take = math.min(n, want)
if take <= 0 then
  return 0
end
if take == n then
  redis.call('HDEL', KEYS[1], field)
else
  redis.call('HINCRBY', KEYS[1], field, -take)
end
return take
