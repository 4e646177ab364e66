-- deregister: remove a gracefully stopped worker.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of its broker identity
-- KEYS[3] heartbeat     STRING  this worker's heartbeat
-- KEYS[4] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[5] presence      HASH    worker id -> its last heartbeat, of the workers whose presence is seen
-- KEYS[6] absent        HASH    worker id -> "since|beat" (see check_presence)
-- KEYS[7] host          SET     worker ids registered from this host
-- KEYS[8] broker        SET     worker ids sharing this RedisBroker broker_id (optional)
--
-- ARGV[1] worker id
--
-- When messages are still recorded in flight (the shutdown timeout
-- abandoned them), the worker is not removed: its heartbeat is dropped
-- instead so that the next sweep recovers them.  Returns how many
-- messages were left to recovery (0 when the worker was removed).

-- include: _worker

local workers, deadlines, heartbeat, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local presence, absent, host, broker = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local worker_id = ARGV[1]
local left = redis.call("hlen", inflight)
if redis.call("hexists", inflight, "__seq__") == 1 then
    left = left - 1
end

-- Its presence is about to go: it is no longer presence-checked.
redis.call("del", heartbeat)
redis.call("hdel", presence, worker_id)
redis.call("hdel", absent, worker_id)
if left > 0 then
    redis.call("zadd", deadlines, 0, worker_id)
    return left
end

redis.call("del", inflight)
unregister(workers, deadlines, host, broker, worker_id)
return 0
