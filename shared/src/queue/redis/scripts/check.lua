-- check.lua: helpers prepended to every script that moves a job (see `scripts.rs`).
--
-- Redis does not roll back a script that fails part-way, so a script that moves a job
-- first checks every key it will write with these helpers and, when one is foreign or
-- corrupt, returns an error reply before its first write: nothing changes, and the
-- error (code CORRUPT) names the key. No KEYS or ARGV of its own.

-- `key` holds a `want` or nothing; otherwise says what it holds.
local function foreign(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return key .. ' holds a ' .. t .. ', not a ' .. want
  end
  return nil
end

-- The hash `key`'s `field` is an integer or absent (HINCRBY would fail otherwise).
local function not_counter(key, field)
  local v = redis.pcall('HGET', key, field)
  if type(v) == 'table' and v.err then return foreign(key, 'hash') or (key .. ': ' .. v.err) end
  if v and not string.match(v, '^%-?%d+$') then
    return key .. ' field ' .. field .. ' is not an integer: ' .. string.sub(v, 1, 40)
  end
  return nil
end

-- The first problem among the checks given, as an error reply, or nil.
local function corrupt(...)
  for i = 1, select('#', ...) do
    local problem = select(i, ...)
    if problem then return redis.error_reply('CORRUPT ' .. problem) end
  end
  return nil
end

-- Milliseconds on the server's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The batch a job belongs to, from its record (`prefix .. 'job:' .. job`, written by
-- the HTTP service; jobs submitted otherwise have none): the batch hash's key or nil,
-- and a problem when the record or the batch hash is corrupt. `field` is the batch
-- counter the caller will change. One HGET for a job without a batch.
local function batch_of(prefix, job, field)
  local record = prefix .. 'job:' .. job
  local batch = redis.pcall('HGET', record, 'batch')
  if type(batch) == 'table' and batch.err then return nil, foreign(record, 'hash') end
  if not batch or batch == '' then return nil, nil end
  local key = prefix .. 'batch:' .. batch
  return key, foreign(key, 'hash') or not_counter(key, field)
end

-- Counts a job's final outcome in its batch and notes it in its record (`outcome`, which
-- the tenant's job listing reads). The batch hash expires with the batch; a missing one
-- is created with `ttl` so no key outlives it. A job without a batch has its outcome
-- noted only when it has a record (a hash: one written by the HTTP service or a
-- command-line batch); no record is created, so none outlives its TTL.
local function count_outcome(prefix, job, batch, kind, delta, ttl)
  local record = prefix .. 'job:' .. job
  if not batch then
    if redis.call('TYPE', record)['ok'] ~= 'hash' then return end
  else
    if delta < 0 and redis.call('EXISTS', batch) == 0 then return end
    redis.call('HINCRBY', batch, 'n:' .. kind, delta)
    if redis.call('PTTL', batch) == -1 then redis.call('PEXPIRE', batch, ttl) end
  end
  if delta > 0 then
    redis.call('HSET', record, 'outcome', kind)
  else
    redis.call('HDEL', record, 'outcome')
  end
end
