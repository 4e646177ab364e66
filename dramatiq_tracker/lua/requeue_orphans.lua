-- requeue_orphans: settle a dead RedisBroker process's un-acked messages:
-- move them back onto their queues, dead-letter them, or drop them.  Runs
-- on the broker's Redis, on Dramatiq's keys (dramatiq/brokers/redis/dispatch.lua).
--
-- KEYS, five per queue:
--   acks           SET   $namespace:__acks__.$broker_id.$queue, the dead process's un-acked ids
--   queue          LIST  $namespace:$queue
--   messages       HASH  $namespace:$queue.msgs, redis message id -> payload
--   dead letters   ZSET  $namespace:$canonical_queue.XQ, redis message id -> when dead-lettered
--   dead messages  HASH  $namespace:$canonical_queue.XQ.msgs
--
-- ARGV[1] the time (ms) to stamp dead letters with, as Dramatiq's nack does
-- ARGV[2..], four per orphan:
--   the index (1-based) of its queue's five keys
--   its redis message id
--   "requeue", "deadletter" or "drop"
--   a replacement payload, or "" to keep the stored one
--
-- Each orphan is settled only if this call removes it from the acks set, so
-- racing sweepers and Dramatiq's own maintenance settle it exactly once.
-- A requeued orphan keeps its redis message id and goes to the head of its
-- queue: it was already dequeued once and should not wait behind the whole
-- queue again.  A dead-lettered one goes where Dramatiq's nack puts it.
--
-- Returns the redis message ids that this call settled.

local settled = {}
local now = ARGV[1]
for i = 2, #ARGV, 4 do
    local base = (tonumber(ARGV[i]) - 1) * 5
    local acks, queue, messages = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
    local dead_letters, dead_messages = KEYS[base + 4], KEYS[base + 5]
    local id, action, payload = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if redis.call("srem", acks, id) == 1 then
        local stored = redis.call("hget", messages, id)
        if stored then
            if payload == "" then
                payload = stored
            end
            if action == "requeue" then
                redis.call("hset", messages, id, payload)
                redis.call("lpush", queue, id)
            elseif action == "deadletter" then
                redis.call("zadd", dead_letters, now, id)
                redis.call("hset", dead_messages, id, payload)
                redis.call("hdel", messages, id)
            else
                redis.call("hdel", messages, id)
            end
            settled[#settled + 1] = id
        end
    end
end
return settled
