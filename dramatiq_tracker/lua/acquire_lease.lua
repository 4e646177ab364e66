-- acquire_lease: take or renew a lease held by an owner token.
--
-- KEYS[1] lease  STRING  the owner's token
--
-- ARGV[1] owner token
-- ARGV[2] duration (ms)
--
-- Returns 1 when the caller holds the lease for the next ARGV[2] ms, else 0.

local lease = KEYS[1]

local owner = redis.call("get", lease)
if owner == ARGV[1] then
    redis.call("pexpire", lease, ARGV[2])
    return 1
end
if owner then
    return 0
end
redis.call("set", lease, ARGV[1], "px", ARGV[2])
return 1
