-- acquire_lock: take a uniqueness lock for one attempt of a message.
--
-- KEYS[1] lock   HASH  message_id, attempt, mode, actor, queue, worker, acquired_at
-- KEYS[2] locks  ZSET  digest -> expiry (server ms; "+inf" for locks without a TTL)
--
-- ARGV[1] digest
-- ARGV[2] message id
-- ARGV[3] attempt (the message's delivery attempt)
-- ARGV[4] mode
-- ARGV[5] actor name
-- ARGV[6] queue name
-- ARGV[7] worker id, or "" while the message is queued
-- ARGV[8] ttl (ms), or "0" for none
--
-- A lock held by the same message is the caller's: an earlier attempt that
-- crashed, or the same message enqueued again.  This attempt takes it over,
-- unless a newer attempt holds it.
--
-- Returns {"acquired"}, {"owned"} (taken over from the same message), or
-- {"conflict", owner message id, owner worker id} without changing anything.

local lock, locks = KEYS[1], KEYS[2]

local digest, message_id = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[8])
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Forget the index entries of locks that expired.
redis.call("zremrangebyscore", locks, "-inf", now)

local owner = redis.call("hget", lock, "message_id")
if owner and owner ~= message_id then
    return {"conflict", owner, redis.call("hget", lock, "worker") or ""}
end
if owner and (tonumber(redis.call("hget", lock, "attempt") or "0") or 0) > (tonumber(ARGV[3]) or 0) then
    return {"conflict", owner, redis.call("hget", lock, "worker") or ""}
end

redis.call(
    "hset", lock,
    "message_id", message_id, "attempt", ARGV[3], "mode", ARGV[4],
    "actor", ARGV[5], "queue", ARGV[6], "worker", ARGV[7], "acquired_at", now
)
if owner then
    -- Taken over: keep the lock's expiry, whatever it is.
    return {"owned"}
end
if ttl > 0 then
    redis.call("pexpire", lock, ttl)
    redis.call("zadd", locks, now + ttl, digest)
else
    redis.call("zadd", locks, "+inf", digest)
end
return {"acquired"}
