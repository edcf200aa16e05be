-- dlq_retry.lua: puts dead letters back on the job stream.
--
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the job stream
-- KEYS[3]  the stats hash
-- ARGV[1]  a dead-letter id, or '' for all of them
-- ARGV[2]  the prefix of result keys (a job's result is ARGV[2] .. job id; same hash
--          tag, so the same slot as the declared keys)
-- Returns  how many were re-enqueued.
--
-- Atomicity: each dead letter is re-added and removed in the same script, so a job is
-- never both dead and queued, nor lost between the two. Its stored failure is deleted
-- with it: results are written only once (SET NX), so a kept failure would make the
-- retried run's result look like a duplicate. A dead letter without an envelope (an
-- entry that never had one) cannot run and stays where it is. The envelope keeps its
-- attempt count; the retried job gets a fresh set of deliveries.
local entries
if ARGV[1] == '' then
  entries = redis.call('XRANGE', KEYS[1], '-', '+')
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
end
local moved = 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local envelope, job = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'e' and fields[i + 1] ~= '' then envelope = fields[i + 1] end
    if fields[i] == 'job' and fields[i + 1] ~= '' then job = fields[i + 1] end
  end
  if envelope then
    if job then redis.call('DEL', ARGV[2] .. job) end
    redis.call('XADD', KEYS[2], '*', 'e', envelope)
    redis.call('XDEL', KEYS[1], entry[1])
    moved = moved + 1
  end
end
if moved > 0 then redis.call('HINCRBY', KEYS[3], 'dlq_retried', moved) end
return moved
