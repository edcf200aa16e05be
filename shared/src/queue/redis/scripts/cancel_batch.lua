-- cancel_batch.lua: cancels the jobs of one page of a batch that no worker has claimed
-- yet (the rule is `cancel_job` in cancel_job.lua, prepended with check.lua); the
-- caller pages through the batch's job list.
--
-- KEYS[1]      the job stream
-- KEYS[1 + i]  the record of the i-th job of the page (hash: stream, entry, state)
-- ARGV[1]      consumer group
-- ARGV[2]      the queue's key prefix (`sluice:{q}:`): a backlog named by a record
--              must start with it
-- Returns      {cancelled, running, gone, corrupt}: how many jobs of the page were
--              cancelled, are claimed by a worker, are gone (finished, cancelled
--              before, or their record expired), or have a corrupt record or stream
--              (left as they are).
--
-- Atomicity: each job is cancelled as cancel.lua cancels one (its pending check, XDEL
-- and record update together, its keys checked before its writes), and the whole page
-- in one script: no worker claims one of its jobs half-way. A corrupt job is skipped,
-- not the page: one damaged record does not keep the rest of a batch running.
local counts = {0, 0, 0, 0}
local slot = {cancelled = 1, running = 2, gone = 3}
for i = 2, #KEYS do
  local answer = cancel_job(KEYS[1], KEYS[i], ARGV[1], ARGV[2])
  local at = slot[answer] or 4
  counts[at] = counts[at] + 1
end
return counts
