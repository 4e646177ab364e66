-- deregister: remove a gracefully stopped worker.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms)
-- KEYS[3] heartbeat     STRING  this worker's heartbeat
-- KEYS[4] inflight      HASH    this worker's message id -> in-flight record
-- KEYS[5] host          SET     worker ids registered from this host
-- KEYS[6] broker        SET     worker ids sharing this RedisBroker broker_id (optional)
--
-- ARGV[1] worker id
--
-- When messages are still recorded in flight (the shutdown timeout
-- abandoned them), the worker is not removed: its heartbeat is dropped
-- instead so that the next sweep recovers them.  Returns how many
-- messages were left to recovery (0 when the worker was removed).

local worker_id = ARGV[1]
local left = redis.call("hlen", KEYS[4])

redis.call("del", KEYS[3])
if left > 0 then
    redis.call("zadd", KEYS[2], 0, worker_id)
    return left
end

redis.call("hdel", KEYS[1], worker_id)
redis.call("zrem", KEYS[2], worker_id)
redis.call("srem", KEYS[5], worker_id)
if KEYS[6] then
    redis.call("srem", KEYS[6], worker_id)
end
return 0
