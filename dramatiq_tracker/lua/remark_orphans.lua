-- remark_orphans: give the recovery marks to orphans that Dramatiq's own
-- maintenance requeued between the tracker's claim and its move.  Runs on
-- the broker's Redis, on Dramatiq's keys (dramatiq/brokers/redis/dispatch.lua).
--
-- KEYS, two per queue:
--   queue          LIST  $namespace:$queue
--   messages       HASH  $namespace:$queue.msgs, redis message id -> payload
--
-- ARGV, three per orphan: the index (1-based) of its queue's two keys, its
-- redis message id, its payload with the recovery marks (and its own id)
--
-- Maintenance pushes the same id back with its old payload.  While that id
-- still waits on its queue, its payload is replaced, so that the copy that
-- runs carries its new attempt; once a worker fetched it, it is left alone.
--
-- Returns the redis message ids whose payload was replaced.

local remarked = {}
for i = 1, #ARGV, 3 do
    local base = (tonumber(ARGV[i]) - 1) * 2
    local queue, messages = KEYS[base + 1], KEYS[base + 2]
    local id = ARGV[i + 1]
    if redis.call("hexists", messages, id) == 1 and redis.call("lpos", queue, id) then
        redis.call("hset", messages, id, ARGV[i + 2])
        remarked[#remarked + 1] = id
    end
end
return remarked
