-- renew_recovery: a sweeper renews its claim on a dead worker's recovery before its next step, and
-- notes a lock cleaner call it is about to make, so that nobody makes it again.
--
-- KEYS[1] recovery   HASH  see the fragment _recovery
-- KEYS[2] deadlines  ZSET  worker id -> when to look at it again (server ms), of its broker identity
--
-- ARGV[1] dead worker id
-- ARGV[2] the sweeper's claim token
-- ARGV[3] takeover_after (ms): the worker is looked at again that long after this renewal
-- ARGV[4] history_ttl (ms): how long the claim and its marks are kept
-- ARGV[5] the mark of the lock cleaner call about to be made ("<message id>|<cleaner>"), or ""
--
-- Returns 0 when the claim is not the caller's any more (another sweeper took it over, or the
-- recovery is over): it must stop; 2 when the mark was there already (the call was made: it must
-- not be made again); else 1.

-- include: _recovery

local recovery, deadlines = KEYS[1], KEYS[2]

if redis.call("hget", recovery, "token") ~= ARGV[2] then
    return 0
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("hset", recovery, "renewed", now)
redis.call("pexpire", recovery, ARGV[4])
redis.call("zadd", deadlines, "xx", now + tonumber(ARGV[3]), ARGV[1])
if ARGV[5] ~= "" and redis.call("hsetnx", recovery, ARGV[5], now) == 0 then
    return 2
end
return 1
