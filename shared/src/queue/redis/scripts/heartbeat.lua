-- heartbeat.lua: records that a worker is alive, and forgets workers gone for long.
--
-- KEYS[1]  the workers hash (consumer name → server ms after which it counts as gone)
-- ARGV[1]  the consumer's name
-- ARGV[2]  how long the beat holds, ms
-- ARGV[3]  how long a gone worker's entry is kept before it is forgotten, ms
-- Returns  the number of gone workers forgotten.
--
-- Atomicity: the beat and the pruning are one script, so a worker that beats again
-- under the name of an entry being pruned is never forgotten. Pruning bounds the hash:
-- workers that crash never remove their own entry, and each name is kept at most the
-- beat plus ARGV[3] after its last beat. The server's clock is the only clock.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply('workers key ' .. KEYS[1] .. ' is a ' .. kind .. ', not a hash')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local keep = tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local forgotten = 0
for i = 1, #entries, 2 do
  local until_ms = tonumber(entries[i + 1])
  if until_ms == nil or until_ms + keep < now then
    redis.call('HDEL', KEYS[1], entries[i])
    forgotten = forgotten + 1
  end
end
return forgotten
