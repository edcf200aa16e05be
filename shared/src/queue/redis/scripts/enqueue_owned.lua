-- enqueue_owned.lua: enqueues a tenant's jobs into its backlog with their records (and
-- their batch's hash and job list), for the dispatcher to admit.
--
-- KEYS[1]      the tenant's backlog stream
-- KEYS[2]      the set of tenants with a non-empty backlog
-- KEYS[3]      the batch hash (tenant, total, outcome counters `n:<kind>`, and
--              origin = 'api': only such batches are the API's; a command-line
--              batch's hash names its --tenant too, and must read as missing)
-- KEYS[4]      the batch's job-id list (KEYS[3], KEYS[4] unused without a batch)
-- KEYS[5]      the queue's `owned` flag: set once any job of the queue has a record,
--              so complete.lua looks for records (one HGET per job) only on queues
--              that have them
-- KEYS[6]      the tenant's jobs index (sorted set, every score 0, of job ids)
-- KEYS[7]      the tenant's batches index (as KEYS[6], of batch ids)
-- KEYS[7 + i]  the record of the i-th job
-- ARGV[1]      tenant
-- ARGV[2]      batch id, or ''
-- ARGV[3]      record TTL, ms (the result TTL)
-- ARGV[4]      the request's total job count (the batch's, when a batch)
-- ARGV[5]      the tenant's backlog quota (most jobs waiting), or '' for none; the
--              caller passes it with the first of a request's chunks only
-- then per job: envelope, job id, limits (JSON)
-- Returns      the backlog entry id of each job; or {'full', <jobs waiting>} when
--              the backlog's length plus ARGV[4] would pass ARGV[5] (nothing changes).
--
-- The indexes list a tenant's jobs and batches for `GET /v1/jobs` and `/v1/batches`.
-- Ids are UUIDv7s: their text sorts by creation time, so with every score 0 the sets
-- are in submission order and a page is a ZRANGE BYLEX. Each write trims what was
-- submitted more than a record TTL ago (those records have expired; `listing.rs`
-- skips any member whose record is gone) and gives the set the TTL, so an index
-- lives as long as the newest of its records.
--
-- Atomicity: every key is checked before the first write ('CORRUPT <key> …' error,
-- nothing changes). A job's entry, its record and its place in the batch appear
-- together, and the batch hash before any of its jobs: the dispatcher can never move,
-- nor a worker finish, a job whose record or batch is not there yet, so the batch's
-- outcome counters (updated by complete.lua and dead.lua from the record) miss none.
-- The backlog quota is checked here, before the first write, rather than by the caller
-- beforehand: a check-then-enqueue lets concurrent requests each pass the check and
-- together overshoot the quota. A request split into several calls is checked whole
-- with its first call; a concurrent request between its calls sees only the part
-- written so far, so it may overshoot by at most the rest of that one request.
local tenant, batch, ttl = ARGV[1], ARGV[2], ARGV[3]
local n = #KEYS - 7
local problem = foreign(KEYS[1], 'stream') or foreign(KEYS[2], 'set')
if not problem and batch ~= '' then
  problem = foreign(KEYS[3], 'hash') or foreign(KEYS[4], 'list')
    or foreign(KEYS[7], 'zset')
end
if not problem and n > 0 then problem = foreign(KEYS[6], 'zset') end
for i = 1, n do
  if problem then break end
  problem = foreign(KEYS[7 + i], 'hash')
end
if problem then return redis.error_reply('CORRUPT ' .. problem) end
if ARGV[5] ~= '' then
  local waiting = redis.call('XLEN', KEYS[1])
  if waiting + tonumber(ARGV[4]) > tonumber(ARGV[5]) then
    return {'full', tostring(waiting)}
  end
end
redis.call('SET', KEYS[5], '1')
if batch ~= '' then
  redis.call('HSET', KEYS[3], 'tenant', tenant, 'total', ARGV[4], 'origin', 'api')
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local ids = {}
for i = 1, n do
  local base = 5 + (i - 1) * 3
  local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[base + 1], 'j', ARGV[base + 2])
  redis.call('HSET', KEYS[7 + i], 'tenant', tenant, 'stream', KEYS[1], 'entry', id,
    'batch', batch, 'limits', ARGV[base + 3])
  redis.call('PEXPIRE', KEYS[7 + i], ttl)
  redis.call('ZADD', KEYS[6], 0, ARGV[base + 2])
  if batch ~= '' then redis.call('RPUSH', KEYS[4], ARGV[base + 2]) end
  ids[i] = id
end
if batch ~= '' then redis.call('PEXPIRE', KEYS[4], ttl) end
-- The UUIDv7 text of the oldest submission time whose records can still live: ids
-- below it are trimmed from the indexes.
local function cutoff()
  local ms = now_ms() - tonumber(ttl)
  if ms < 0 then ms = 0 end
  return string.format('%08x-%04x', math.floor(ms / 65536), ms % 65536)
end
local function index(key, member)
  redis.call('ZADD', key, 0, member)
  redis.call('ZREMRANGEBYLEX', key, '-', '(' .. cutoff())
  redis.call('PEXPIRE', key, ttl)
end
if n > 0 then
  redis.call('ZREMRANGEBYLEX', KEYS[6], '-', '(' .. cutoff())
  redis.call('PEXPIRE', KEYS[6], ttl)
end
if batch ~= '' then index(KEYS[7], batch) end
if n > 0 then redis.call('SADD', KEYS[2], tenant) end
return ids
