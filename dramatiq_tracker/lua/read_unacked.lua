-- read_unacked: the messages a RedisBroker process fetched and did not ack,
-- with their payloads, in one step.  Runs on the broker's Redis, on
-- Dramatiq's keys (dramatiq/brokers/redis/dispatch.lua); writes nothing.
--
-- KEYS, two per queue:
--   acks       SET   $namespace:__acks__.$broker_id.$queue, the process's un-acked ids
--   messages   HASH  $namespace:$queue.msgs, redis message id -> payload
--
-- Returns, per queue in KEYS order, a flat array: redis message id, payload
-- (nil when it is gone), redis message id, payload, ...  Recovery reads a
-- dead process's whole acks this way: one round trip, not two, per dead worker.

local found = {}
for i = 1, #KEYS, 2 do
    local ids = redis.call("smembers", KEYS[i])
    local pairs_found = {}
    for start = 1, #ids, 1000 do
        local chunk = {unpack(ids, start, math.min(start + 999, #ids))}
        local payloads = redis.call("hmget", KEYS[i + 1], unpack(chunk))
        for j = 1, #chunk do
            pairs_found[#pairs_found + 1] = chunk[j]
            pairs_found[#pairs_found + 1] = payloads[j]
        end
    end
    found[#found + 1] = pairs_found
end
return found
