-- dlq_retry.lua: puts dead letters of failed jobs back on the job stream.
--
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the job stream
-- KEYS[3]  the stats hash
-- ARGV[1]  a dead-letter id, or '' for all of them
-- ARGV[2]  the queue's key prefix (`sluice:{q}:`): a job's result, record and batch
--          hash are ARGV[2] .. 'result:' .. id, … 'job:' .. id, … 'batch:' .. id
--          (same hash tag, so the same slot as the declared keys)
-- ARGV[3]  result TTL, ms (for a batch hash recreated by the count)
-- ARGV[4]  with ARGV[1] = '': where this page starts (`-`, or `(<id>` after the last
--          letter of the previous page)
-- ARGV[5]  with ARGV[1] = '': the last letter to look at (the newest when the caller
--          started: letters written while it pages are not retried by the same run)
-- ARGV[6]  with ARGV[1] = '': the most letters to look at in this call
-- Returns  {moved, next, problem, …}: how many were re-enqueued; the id of the last
--          letter looked at when the page was full (the caller goes on after it), else
--          ''; then one line per letter left in place because a key of its job is
--          corrupt or it has succeeded.
--          An error 'CORRUPT <key> …' (nothing changes) when a shared key is corrupt.
--
-- Only failed jobs are touched: a letter whose job has a stored success (results
-- are framed as a version byte, then the 16-byte job id with its length byte, then
-- the outcome's variant, 0 = success; byte 18) is left alone, and its result kept.
-- A letter without an envelope (an entry that never had one) cannot run and stays.
--
-- Atomicity: shared keys are checked before the first write, a letter's own keys
-- before it is touched. Each letter is re-added to the job stream before it is
-- removed from the dead letters, with its stored failure deleted (results are written
-- only once, SET NX, so a kept failure would make the retried run look like a
-- duplicate) and its batch count taken back, so the job is counted once. The envelope
-- keeps its attempt count; the retried job gets a fresh set of deliveries.
--
-- Paging: `--all` over days of dead letters in one script would block Redis for as
-- long as it takes; each call looks at one bounded page, and every letter is handled
-- whole within one call, so a page boundary changes nothing above.
local prefix = ARGV[2]
local bad = corrupt(foreign(KEYS[1], 'stream'), foreign(KEYS[2], 'stream'),
  foreign(KEYS[3], 'hash'), not_counter(KEYS[3], 'dlq_retried'))
if bad then return bad end
local entries
if ARGV[1] == '' then
  entries = redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[5], 'COUNT', tonumber(ARGV[6]))
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
end
local moved, problems = 0, {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local envelope, job, kind = nil, nil, ''
  for i = 1, #fields, 2 do
    if fields[i] == 'e' and fields[i + 1] ~= '' then envelope = fields[i + 1] end
    if fields[i] == 'job' and fields[i + 1] ~= '' then job = fields[i + 1] end
    if fields[i] == 'kind' then kind = fields[i + 1] end
  end
  local result, batch, problem = nil, nil, nil
  if envelope and job then
    result = prefix .. 'result:' .. job
    problem = foreign(result, 'string')
    if not problem and redis.call('GETRANGE', result, 18, 18) == '\0' then
      problem = 'job ' .. job .. ' has succeeded since; dead letter ' .. entry[1] .. ' left'
    end
    if not problem then batch, problem = batch_of(prefix, job, 'n:' .. kind) end
  end
  if problem then
    problems[#problems + 1] = problem
  elseif envelope then
    redis.call('XADD', KEYS[2], '*', 'e', envelope)
    if job and redis.call('DEL', result) == 1 then
      count_outcome(prefix, job, batch, kind, -1, ARGV[3])
    end
    redis.call('XDEL', KEYS[1], entry[1])
    moved = moved + 1
  end
end
if moved > 0 then redis.call('HINCRBY', KEYS[3], 'dlq_retried', moved) end
local next = ''
if ARGV[1] == '' and #entries >= tonumber(ARGV[6]) then next = entries[#entries][1] end
local reply = {moved, next}
for _, p in ipairs(problems) do reply[#reply + 1] = p end
return reply
