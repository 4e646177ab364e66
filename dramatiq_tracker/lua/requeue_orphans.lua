-- requeue_orphans: move a dead RedisBroker process's un-acked messages
-- back onto their queues.  Runs on the broker's Redis, on Dramatiq's keys
-- (see dramatiq/brokers/redis/dispatch.lua).
--
-- KEYS, one triple per queue:
--   acks      SET   $namespace:__acks__.$broker_id.$queue, the dead process's un-acked ids
--   queue     LIST  $namespace:$queue
--   messages  HASH  $namespace:$queue.msgs, redis message id -> payload
--
-- ARGV, one triple per orphan:
--   the index (1-based) of its queue's triple in KEYS
--   its redis message id
--   a replacement payload, or "" to keep the stored one
--
-- Each orphan moves only if this call removes it from the acks set, so
-- racing sweepers and Dramatiq's own maintenance move it exactly once.
-- It keeps its redis message id and goes to the head of its queue: it was
-- already dequeued once and should not wait behind the whole queue again.
--
-- Returns the redis message ids that this call moved.

local moved = {}
for i = 1, #ARGV, 3 do
    local base = (tonumber(ARGV[i]) - 1) * 3
    local acks, queue, messages = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
    local id, payload = ARGV[i + 1], ARGV[i + 2]
    if redis.call("srem", acks, id) == 1 and redis.call("hexists", messages, id) == 1 then
        if payload ~= "" then
            redis.call("hset", messages, id, payload)
        end
        redis.call("lpush", queue, id)
        moved[#moved + 1] = id
    end
end
return moved
