-- release_recovery: a sweeper that stops before the end of a dead worker's recovery (its time
-- budget ran out) lets another finish it at once.
--
-- KEYS[1] recovery   HASH  see the fragment _recovery
-- KEYS[2] deadlines  ZSET  worker id -> when to look at it again (server ms), of its broker identity
--
-- ARGV[1] dead worker id
-- ARGV[2] the sweeper's claim token
--
-- The marks of the lock cleaner calls made stay.  Returns 1, or 0 when the claim was not the
-- caller's (nothing done).

local recovery, deadlines = KEYS[1], KEYS[2]

if redis.call("hget", recovery, "token") ~= ARGV[2] then
    return 0
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("hset", recovery, "renewed", 0)
redis.call("zadd", deadlines, "xx", now, ARGV[1])
return 1
