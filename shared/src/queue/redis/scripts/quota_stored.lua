-- quota_stored.lua: reserves bytes stored for a tenant (inputs the API accepts, outputs
-- and results workers store) against its stored-bytes quota, counted over a rolling
-- window of time buckets (the blob lifetime).
--
-- KEYS[1]  the tenant's usage hash (field: bucket index, value: bytes reserved in it)
-- ARGV[1]  bytes to reserve (0 only reads)
-- ARGV[2]  the quota, bytes
-- ARGV[3]  bucket length, ms
-- ARGV[4]  buckets in the window (bytes count until their bucket leaves the window)
-- Returns  {1, bytes used after the reservation, the bucket index they are counted in}
--          when reserved (quota_release.lua gives bytes back to that bucket), or
--          {0, bytes used, ms until the oldest counted bucket leaves the window}.
--
-- Atomicity: the sum, the check and the increment run as one script, so concurrent
-- uploads and runs of one tenant can never together pass the quota. A wrong-typed key fails
-- the script before any write, with the key named.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply('quota key ' .. KEYS[1] .. ' is a ' .. kind .. ', not a hash')
end
local want = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local len = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = math.floor(now / len)
local oldest_kept = bucket - window + 1
local used = 0
local oldest = nil
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local b = tonumber(fields[i])
  local n = tonumber(fields[i + 1])
  if b == nil or n == nil or b < oldest_kept then
    -- Expired, or garbage that must not block the tenant for ever.
    redis.call('HDEL', KEYS[1], fields[i])
  else
    used = used + n
    if oldest == nil or b < oldest then
      oldest = b
    end
  end
end
if used + want > max then
  local retry = len
  if oldest ~= nil then
    retry = (oldest + window) * len - now
  end
  return {0, used, math.max(retry, 1)}
end
if want > 0 then
  redis.call('HINCRBY', KEYS[1], tostring(bucket), want)
  redis.call('PEXPIRE', KEYS[1], len * (window + 1))
end
return {1, used + want, bucket}
