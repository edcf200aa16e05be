-- enqueue_batch.lua: enqueues a command-line batch's jobs (`sluice batch --redis`)
-- straight onto the job stream, with their records and their batch's hash and job
-- list, so the batch can be cancelled (cancel_batch.lua) and followed again from
-- another process (`sluice batch attach`).
--
-- KEYS[1]      the job stream
-- KEYS[2]      the batch hash (tenant, total, outcome counters `n:<kind>`)
-- KEYS[3]      the batch's job-id list
-- KEYS[4]      the queue's `owned` flag: set once any job of the queue has a record,
--              so complete.lua and dead.lua count outcomes in batch hashes
-- KEYS[4 + i]  the record of the i-th job
-- ARGV[1]      the tenant the batch runs for (kept in the batch hash only: a record
--              without `tenant` is not an HTTP job, so promote.lua puts a retried
--              job back on the job stream, not into a tenant backlog no dispatcher
--              may serve)
-- ARGV[2]      batch id
-- ARGV[3]      record TTL, ms (the result TTL)
-- ARGV[4]      the batch's total job count
-- ARGV[5]      '1': new jobs, appended to the batch's list (a job whose record already
--              has an entry is skipped: the call is a repeat, see below); '0': jobs
--              enqueued again under their own ids (Redis lost them), already listed
-- then per job: envelope, job id, label (the input's name)
-- Returns      the entry id of each job ('' for a job enqueued again whose record says
--              cancelled: it is skipped); or 'cancelled' (nothing changes) when the
--              batch hash says the batch was cancelled (cancel_batch.lua).
--
-- Atomicity: every key is checked before the first write ('CORRUPT <key> …' error,
-- nothing changes). A job's entry, its record (pointing at that entry) and its place
-- in the batch appear together, and the batch hash before any of its jobs, so a worker
-- can never finish a job whose record or batch is not there yet: the batch's outcome
-- counters miss none, and a cancel finds every queued job where its record says. The
-- cancelled checks and the writes are in one script: a chunk is enqueued wholly before
-- a cancel_batch.lua call (which then cancels it) or refused after it.
-- Idempotence: with ARGV[5] = '1' the same call run twice (a Redis Cluster client
-- re-sends a request whose connection dropped before the reply) writes each job once
-- and returns the same entry ids both times.
local batch, ttl, listed = ARGV[2], ARGV[3], ARGV[5] == '1'
local n = #KEYS - 4
local problem = foreign(KEYS[1], 'stream') or foreign(KEYS[2], 'hash')
  or foreign(KEYS[3], 'list') or foreign(KEYS[4], 'string')
for i = 1, n do
  if problem then break end
  problem = foreign(KEYS[4 + i], 'hash')
end
if problem then return redis.error_reply('CORRUPT ' .. problem) end
if redis.call('HGET', KEYS[2], 'cancelled') == '1' then return 'cancelled' end
redis.call('SET', KEYS[4], '1')
redis.call('HSET', KEYS[2], 'tenant', ARGV[1], 'total', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
local ids = {}
for i = 1, n do
  local base = 5 + (i - 1) * 3
  local entry = listed and redis.call('HGET', KEYS[4 + i], 'entry')
  if entry then
    -- A new job whose record already has an entry: this call is a repeat of one that
    -- ran (a cluster client re-sends a request after a lost connection), so the job is
    -- already on the stream and in the list: its entry again, nothing written twice.
    ids[i] = entry
  elseif redis.call('HGET', KEYS[4 + i], 'state') == 'cancelled' then
    -- Cancelled (`sluice cancel`, or its batch) after it was lost: not run again.
    ids[i] = ''
  else
    local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[base + 1])
    redis.call('HSET', KEYS[4 + i], 'stream', KEYS[1], 'entry', id, 'batch', batch,
      'label', ARGV[base + 3])
    redis.call('PEXPIRE', KEYS[4 + i], ttl)
    if listed then redis.call('RPUSH', KEYS[3], ARGV[base + 2]) end
    ids[i] = id
  end
end
redis.call('PEXPIRE', KEYS[3], ttl)
return ids
