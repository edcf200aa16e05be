-- cancel_batch.lua: marks a batch cancelled and cancels the jobs of one page of it
-- that no worker has claimed yet (the rule is `cancel_job` in cancel_job.lua,
-- prepended with check.lua); the caller pages through the batch's job list.
--
-- KEYS[1]        the job stream
-- KEYS[2]        the batch hash: gets `cancelled` = 1 (enqueue_batch.lua then refuses
--                the batch's further jobs) and `n:cancelled` += the jobs cancelled here;
--                left alone when it no longer exists (not recreated without a TTL)
-- KEYS[3]        the batch tenant's backlog stream (the only stream besides the job
--                stream a record of the batch may name)
-- KEYS[4]        the delayed set (a job waiting to be retried is removed from it)
-- KEYS[3 + 2i]   the record of the i-th job of the page (hash: stream, entry, state)
-- KEYS[4 + 2i]   the i-th job's stored-result key (read only)
-- ARGV[1]        consumer group
-- Returns        {cancelled, running, gone, corrupt}: how many jobs of the page were
--                cancelled, are claimed by a worker, are gone (finished, cancelled
--                before, or their record expired), or have a corrupt record or stream
--                (left as they are); an error 'CORRUPT <key> …' (nothing changes) when
--                the batch hash is not a hash.
--
-- Atomicity: each job is cancelled as cancel.lua cancels one (its pending check, XDEL
-- and record update together, its keys checked before its writes), and the whole page
-- in one script: no worker claims one of its jobs half-way, and no enqueue_batch.lua
-- chunk slips in between the flag and the page. A corrupt job is skipped, not the page:
-- one damaged record does not keep the rest of a batch running.
local problem = foreign(KEYS[2], 'hash')
if problem then return redis.error_reply('CORRUPT ' .. problem) end
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists then redis.call('HSET', KEYS[2], 'cancelled', '1') end
local counts = {0, 0, 0, 0}
local slot = {cancelled = 1, running = 2, gone = 3}
local lookup = in_delayed(KEYS[4])
for i = 5, #KEYS, 2 do
  local answer = cancel_job(KEYS[1], KEYS[i], KEYS[i + 1], KEYS[3], ARGV[1], KEYS[4], lookup)
  local at = slot[answer] or 4
  counts[at] = counts[at] + 1
end
if exists and counts[1] > 0 then
  redis.call('HINCRBY', KEYS[2], 'n:cancelled', counts[1])
end
return counts
