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
-- ARGV[2..], five per orphan:
--   the index (1-based) of its queue's five keys
--   its redis message id
--   "requeue", "deadletter" or "drop"
--   the redis message id to requeue it under, or "" to keep its own
--   a replacement payload, or "" to keep the stored one
--
-- Each orphan is settled only if this call removes it from the acks set, so
-- racing sweepers and Dramatiq's own maintenance settle it exactly once.  A
-- requeued orphan goes to the head of its queue (it was dequeued once
-- already and should not wait behind the whole queue again), under a new
-- redis message id when one is given: the copy a worker declared dead may
-- still hold then acks nothing but its own stale id.  A dead-lettered one
-- goes where Dramatiq's nack puts it.
--
-- Returns three lists of the given redis message ids: those this call
-- settled; those no longer in the acks set (someone else settled them:
-- another sweeper, or Dramatiq's maintenance); and those whose payload was
-- gone (nothing to deliver).

local settled, raced, missing = {}, {}, {}
local now = ARGV[1]
for i = 2, #ARGV, 5 do
    local base = (tonumber(ARGV[i]) - 1) * 5
    local acks, queue, messages = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
    local dead_letters, dead_messages = KEYS[base + 4], KEYS[base + 5]
    local id, action, new_id, payload = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    if redis.call("srem", acks, id) == 0 then
        raced[#raced + 1] = id
    else
        local stored = redis.call("hget", messages, id)
        if not stored then
            missing[#missing + 1] = id
        else
            if payload == "" then
                payload = stored
            end
            if action == "requeue" then
                if new_id ~= "" and new_id ~= id then
                    redis.call("hdel", messages, id)
                    id = new_id
                end
                redis.call("hset", messages, id, payload)
                redis.call("lpush", queue, id)
            elseif action == "deadletter" then
                redis.call("zadd", dead_letters, now, id)
                redis.call("hset", dead_messages, id, payload)
                redis.call("hdel", messages, id)
            else
                redis.call("hdel", messages, id)
            end
            settled[#settled + 1] = ARGV[i + 1]
        end
    end
end
return {settled, raced, missing}
