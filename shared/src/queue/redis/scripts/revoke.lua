-- revoke.lua: revokes every token of a tenant.
--
-- KEYS[1]  the token hash (SHA-256 of token → tenant)
-- KEYS[2]  the tenant's set of token hashes
-- Returns  how many tokens were revoked; an error 'CORRUPT <key> …' (nothing changes)
--          when either key has the wrong type.
--
-- Atomicity: reading the tenant's tokens and deleting them is one step, so a token
-- issued at the same moment is either revoked with the others or issued after the
-- revocation (and valid); never listed nowhere and unrevocable. Both keys share the
-- hash tag {tenants}.
local bad = corrupt(foreign(KEYS[1], 'hash'), foreign(KEYS[2], 'set'))
if bad then return bad end
local hashes = redis.call('SMEMBERS', KEYS[2])
for i = 1, #hashes, 1000 do
  redis.call('HDEL', KEYS[1], unpack(hashes, i, math.min(i + 999, #hashes)))
end
redis.call('DEL', KEYS[2])
return #hashes
