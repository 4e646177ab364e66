-- release_lease: give a lease back, only if the caller still holds it.
--
-- KEYS[1] lease  STRING  "<owner token>|<owner's worker id>"
--
-- ARGV[1] owner: "<token>|<worker id>"
--
-- Returns 1 when released, 0 when someone else holds it (or nobody).

local lease = KEYS[1]

if redis.call("get", lease) == ARGV[1] then
    return redis.call("del", lease)
end
return 0
