-- complete.lua: stores the results of a batch of successful runs and acknowledges and
-- removes their entries. Every stored result counts in `completed` (workers call it
-- for successes only; a failed run is retried by retry.lua or ends in dead.lua, which
-- counts `failed`).
--
-- KEYS[1]      the job stream
-- KEYS[2]      the stats hash
-- KEYS[3]      the completion-notice stream
-- KEYS[4]      the queue's `owned` flag (set, never cleared, by enqueue_owned.lua and
--              enqueue_batch.lua, the only writers of records): without it no job of
--              the queue has a record, and no record or batch is looked at. Declared
--              (not built from ARGV[4]) because the skip depends on it: in a cluster
--              whose slot is migrating, a declared key the node no longer holds gets
--              ASK/TRYAGAIN instead of reading as missing.
-- KEYS[5…]    per job, in order: its result key, then, when its staged flag is 1, its
--              staged key (`staged:<entry id>:<consumer>`, keys.rs), where the caller
--              SET the encoded result (PX a short staging TTL, `staged_ttl` in
--              completions.rs) in the same round trip, just before this script (an
--              inline job declares no staged key: a key per job is a Lua string the
--              no-op's completions would pay for)
-- ARGV[1]      consumer group
-- ARGV[2]      result TTL, ms
-- ARGV[3]      notice TTL, ms (notices older than this are trimmed)
-- ARGV[4]      the queue's key prefix (`sluice:{q}:`): job records and batch hashes are
--              ARGV[4] .. 'job:' .. id and ARGV[4] .. 'batch:' .. id (same hash tag,
--              so the same slot as the declared keys)
-- then per job: entry id, job id, outcome kind, encoded result ('' when staged),
--              consumer, staged flag ('1': the result is in the staged key and is
--              moved with RENAMENX, no copy through Lua; '0': it is the ARGV value)
-- Returns      an error, with nothing written, when the declared keys do not match the
--              per-job staged flags (a caller bug: a key would be renamed onto another
--              job's); else per job: 1 stored; 0 a result was already stored (duplicate;
--              the entry, if still there, is removed); 2 stale: the entry is gone (retried,
--              dead-lettered, released, cancelled, or lost with Redis's data) and nothing
--              changed; 3 the staged result is missing (expired or evicted between its SET
--              and this script, or its SET failed): nothing stored, the entry left pending,
--              so the job runs again after its lease (the flusher first resends it inline);
--              or 'CORRUPT <key> …' when a key of that job is corrupt (that job's entry is
--              left where it was). Whatever the reply, no staged key of this call is left
--              behind: one not renamed to its result is deleted (a script that fails on a
--              corrupt shared key deletes them before it answers).
--
-- Ownership: a result is stored only while the entry is still pending in the group,
-- whoever holds it now. Pending to the caller: it owns the job. Pending to another
-- consumer (taken over after the caller stalled): the job is not final yet, the
-- caller's run is as good as the new holder's, and storing it ends the job (the new
-- holder's retry, dead letter or completion then finds the entry gone). Not pending:
-- the job already moved on (a retry is waiting in the delayed set, it is dead, or it
-- was re-added), so storing a result would finish a job that will run again.
--
-- Atomicity: every key is checked before the first write, so a corrupt key fails the
-- script (shared keys) or skips its job (per-job keys) with nothing half done. (Deleting
-- this call's staged keys is the one write on those paths: they are this caller's
-- copies, not the queue's state.) A staged key is not type-checked: when the caller's
-- SET landed, it replaced whatever the key held with a string, so it is a string or
-- missing. When the SET was refused (OOM, an ACL) the script cannot tell, and RENAMENX
-- moves whatever the key held: a string left by an earlier delivery of the same entry
-- to the same consumer (its own result of the same job, at most the staging TTL old),
-- or a value written there by hand, which, if not a string, becomes a result key of
-- another type that fetch reports as corrupt. A TYPE per staged job to rule out the
-- hand-written case would cost every large completion a command. RENAMENX onto a
-- result key that exists (of any type) writes nothing and answers 0, and the result
-- key's type is then checked as on the inline path. A renamed result gets the result
-- TTL (PEXPIRE): the staged copy's own TTL is short, so that a copy never renamed
-- (the caller crashed, the script failed) does not outlive the flush's retries by much.
-- The result, XACK/XDEL and counters change in one script: no entry is acknowledged
-- without its result, none is counted without being acknowledged, a job is counted
-- once (SET NX: results are never replaced).
--
-- Limitation: a job whose record exists while the flag does not (the flag deleted by
-- hand or evicted, or records written before the flag existed) is not counted in its
-- batch, nor has its record's outcome noted (its listing shows it pending, while its
-- result is stored). The next enqueue of an owned job sets the flag again.
local group, ttl, notice_ttl, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local per = 6
local n = (#ARGV - 4) / per

-- Where each job's keys start in KEYS, and whether its result is staged.
local key_at, staged_at = {}, {}
local k = 5
for i = 1, n do
  key_at[i] = k
  staged_at[i] = ARGV[4 + (i - 1) * per + 6] == '1'
  if staged_at[i] then k = k + 2 else k = k + 1 end
end
if (#ARGV - 4) % per ~= 0 or k - 1 ~= #KEYS then
  return redis.error_reply('ERR complete.lua: ' .. #KEYS .. ' keys declared for ' ..
    (#ARGV - 4) / per .. ' jobs whose staged flags call for ' .. (k - 1))
end

-- Deletes the staged key of job i, if it staged its result.
local function unstage(i)
  if staged_at[i] then redis.call('DEL', KEYS[key_at[i] + 1]) end
end

local bad = corrupt(foreign(KEYS[1], 'stream'), foreign(KEYS[2], 'hash'),
  not_counter(KEYS[2], 'completed'),
  not_counter(KEYS[2], 'duplicates'), not_counter(KEYS[2], 'stale'))
if bad then
  for i = 1, n do unstage(i) end
  return bad
end

-- Which entries are still pending, one XCLAIM per consumer (JUSTID: no delivery is
-- counted; the entries it names are acknowledged below anyway).
local by_consumer, pending = {}, {}
for i = 1, n do
  local base = 4 + (i - 1) * per
  local consumer = ARGV[base + 5]
  by_consumer[consumer] = by_consumer[consumer] or {}
  table.insert(by_consumer[consumer], ARGV[base + 1])
end
for consumer, ids in pairs(by_consumer) do
  local args = {'XCLAIM', KEYS[1], group, consumer, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  local claimed = redis.pcall(unpack(args))
  if type(claimed) == 'table' and not claimed.err then
    for _, id in ipairs(claimed) do pending[id] = true end
  end
end

-- Only queues with job records (the HTTP service's) have batches to count.
local owned = redis.call('EXISTS', KEYS[4]) == 1
local acked, notice, reply = {}, {}, {}
local recorded, duplicates, stale = 0, 0, 0
for i = 1, n do
  local base = 4 + (i - 1) * per
  local entry, job, kind, result = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local staged = staged_at[i]
  local key, staged_key = KEYS[key_at[i]], KEYS[key_at[i] + 1]
  local batch, problem, missing = nil, nil, false
  if owned and pending[entry] then batch, problem = batch_of(prefix, job, 'n:' .. kind) end
  local stored = false
  if not problem and pending[entry] then
    if staged then
      -- RENAMENX copies nothing and keeps the staged key's short TTL, so the result
      -- gets the result TTL from PEXPIRE; a missing staged key is an error reply,
      -- caught here.
      local moved = redis.pcall('RENAMENX', staged_key, key)
      if type(moved) == 'table' and moved.err then
        missing = redis.call('EXISTS', key) == 0
      else
        stored = moved == 1
        if stored then redis.call('PEXPIRE', key, ttl) end
      end
    else
      stored = redis.call('SET', key, result, 'NX', 'PX', ttl)
    end
  end
  if staged and not stored then unstage(i) end
  if not problem and not stored and not missing then problem = foreign(key, 'string') end
  if problem then
    reply[i] = 'CORRUPT ' .. problem
  elseif missing then
    reply[i] = 3
  elseif stored then
    reply[i] = 1
    recorded = recorded + 1
    notice[#notice + 1] = job
    notice[#notice + 1] = kind
    -- Without the owned flag no job of the queue has a record or a batch (the flag is
    -- set, and never cleared, by whatever writes the first record), so there is
    -- nothing to count: no TYPE per job on a plain queue.
    if owned then count_outcome(prefix, job, batch, kind, 1, ttl) end
    acked[#acked + 1] = entry
  elseif redis.call('EXISTS', key) == 1 then
    reply[i] = 0
    duplicates = duplicates + 1
    if pending[entry] then acked[#acked + 1] = entry end
  else
    reply[i] = 2
    stale = stale + 1
  end
end
if #acked > 0 then
  redis.call('XACK', KEYS[1], group, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
end
if recorded > 0 then
  redis.call('HINCRBY', KEYS[2], 'completed', recorded)
  -- Notices only wake followers early (they look results up when notices fail them),
  -- so a foreign notice key costs the notice, never the completion.
  if not foreign(KEYS[3], 'stream') then
    local now = now_ms()
    redis.call('XADD', KEYS[3], 'MINID', '~', now - notice_ttl, '*', unpack(notice))
    redis.call('PEXPIRE', KEYS[3], notice_ttl)
  end
end
if duplicates > 0 then redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates) end
if stale > 0 then redis.call('HINCRBY', KEYS[2], 'stale', stale) end
return reply
