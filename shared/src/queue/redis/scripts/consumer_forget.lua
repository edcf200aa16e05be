-- consumer_forget.lua: removes a worker's consumer from the job stream's group once
-- it holds nothing, so `sluice status` stops listing a worker that exited cleanly.
--
-- KEYS[1]  the job stream
-- ARGV[1]  consumer group
-- ARGV[2]  the consumer's name
-- Returns  1 when it was removed; 0 when it still holds entries (they stay, to be
--          taken over when their leases expire), or when it, the group or the stream
--          does not exist.
--
-- Atomicity: `XGROUP DELCONSUMER` drops the consumer's pending entries with it, so
-- the pending check and the delete are one script: no claim can land between them
-- and be lost.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return 0 end
local rows = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(rows) ~= 'table' or rows.err or #rows > 0 then return 0 end
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(consumers) do
  for i = 1, #c, 2 do
    if c[i] == 'name' and c[i + 1] == ARGV[2] then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
  end
end
return 0
