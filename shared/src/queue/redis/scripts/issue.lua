-- issue.lua: records a new token of a tenant.
--
-- KEYS[1]  the token hash (SHA-256 of token → tenant)
-- KEYS[2]  the tenant's set of token hashes
-- ARGV[1]  the new token's SHA-256 (hex)
-- ARGV[2]  the tenant
-- Returns  1; an error 'CORRUPT <key> …' (nothing changes) when either key has the
--          wrong type.
--
-- Atomicity: both keys are checked first, and the token is listed under its tenant
-- before it is made valid, so no valid token is ever missing from the set that
-- revoke.lua revokes. Both keys share the hash tag {tenants}.
local bad = corrupt(foreign(KEYS[1], 'hash'), foreign(KEYS[2], 'set'))
if bad then return bad end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
