-- finish_recovery: forget a dead worker once its orphans are delivered again.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms)
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  the worker's heartbeat
-- KEYS[5] inflight      HASH    the worker's message id -> in-flight record
-- KEYS[6] running       HASH    message id -> "worker id|token", all workers
-- KEYS[7] host          SET     worker ids registered from the worker's host
-- KEYS[8] broker        SET     worker ids sharing its broker_id (optional)
--
-- ARGV[1] worker id
-- ARGV[2] history_ttl (ms): tombstones of workers dead for longer are pruned
--
-- The tombstone of this worker stays, so that a zombie learns its fate.
-- Returns 1, or 0 when the worker was not declared dead (nothing done).

local worker_id = ARGV[1]
if not redis.call("zscore", KEYS[3], worker_id) then
    return 0
end

local prefix = worker_id .. "|"
for _, message_id in ipairs(redis.call("hkeys", KEYS[5])) do
    local owner = redis.call("hget", KEYS[6], message_id)
    if owner and string.sub(owner, 1, #prefix) == prefix then
        redis.call("hdel", KEYS[6], message_id)
    end
end
redis.call("del", KEYS[4], KEYS[5])
redis.call("hdel", KEYS[1], worker_id)
redis.call("zrem", KEYS[2], worker_id)
redis.call("srem", KEYS[7], worker_id)
if KEYS[8] then
    redis.call("srem", KEYS[8], worker_id)
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("zremrangebyscore", KEYS[3], "-inf", now - tonumber(ARGV[2]))
return 1
