-- module_put.lua: stores a tenant's module and records the tenant's hold on it, within
-- the tenant's module quota.
--
-- KEYS[1]  the module's bytes (string, content-addressed)
-- KEYS[2]  the module's holders (set of tenant names)
-- KEYS[3]  the tenant's held modules (sorted set: hash → expiry, ms since the epoch)
-- KEYS[4]  the alias to set (string → hash hex); ignored unless ARGV[6] is 1
-- KEYS[5]  the module's metadata (string, JSON; kept with the bytes' lifetime)
-- KEYS[6]  the precompile stream (the module's hash and the tenant are added when
--          the bytes were newly stored: the fleet compiles it for the engine the
--          tenant's jobs use)
-- ARGV[1]  the tenant
-- ARGV[2]  the module's hash, hex
-- ARGV[3]  the module's bytes
-- ARGV[4]  lifetime, ms (refreshed on every use)
-- ARGV[5]  most modules the tenant may hold
-- ARGV[6]  1 to set the alias
-- ARGV[7]  the module's metadata
-- ARGV[8]  the precompile stream's approximate cap (MAXLEN ~)
-- Returns  {1, modules held} when stored, {0, modules held} when over the quota.
--
-- Atomicity: the quota check and every write happen in one script. All type checks
-- come first, so a wrong-typed key fails the script before any write, with the key
-- named. A module stored without a lifetime (by an operator with `sluice module put`)
-- keeps none. The metadata is written with the bytes and takes their lifetime (none
-- for an operator's module), so it never outlives them nor is missing while they are
-- stored. The precompile request is added last, only when this upload stored the
-- bytes (a re-upload of stored bytes costs no quota, so it must not add entries that
-- trim other tenants' requests off the capped stream), and skipped when the stream's
-- key is foreign (a warm cache is an optimization; an upload must not fail for it).
local function expect(key, want)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('module key ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
  return nil
end
local e = expect(KEYS[1], 'string') or expect(KEYS[2], 'set') or expect(KEYS[3], 'zset')
  or expect(KEYS[5], 'string')
if e then return e end
if ARGV[6] == '1' then
  e = expect(KEYS[4], 'string')
  if e then return e end
end
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local held = redis.call('ZCARD', KEYS[3])
if not redis.call('ZSCORE', KEYS[3], ARGV[2]) and held >= tonumber(ARGV[5]) then
  return {0, held}
end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[3], ttl)
local stored_now = redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ttl)
if stored_now then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('SADD', KEYS[2], ARGV[1])
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl >= 0 and pttl < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  if pttl >= 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
local bytes_pttl = redis.call('PTTL', KEYS[1])
if bytes_pttl > 0 then
  redis.call('SET', KEYS[5], ARGV[7], 'PX', bytes_pttl)
else
  redis.call('SET', KEYS[5], ARGV[7])
end
if ARGV[6] == '1' then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', ttl)
end
local stream = redis.call('TYPE', KEYS[6]).ok
if stored_now and (stream == 'none' or stream == 'stream') then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'module', ARGV[2], 'tenant', ARGV[1])
end
return {1, redis.call('ZCARD', KEYS[3])}
