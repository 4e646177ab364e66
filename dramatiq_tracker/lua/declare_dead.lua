-- declare_dead: confirm that a worker is dead and fence it, atomically.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms)
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  the worker's heartbeat
-- KEYS[5] inflight      HASH    the worker's message id -> in-flight record
--
-- ARGV[1] worker id
-- ARGV[2] "1" when the caller saw its process gone (the heartbeat may
--         still be fresh), "0" when death is judged by the heartbeat only
-- ARGV[3] retry_after (ms): when to look at this worker again should the
--         recovery that follows be interrupted
--
-- Returns {"gone"} when the worker is not registered, {"alive"} when its
-- heartbeat is fresh and its process was not seen gone, else
-- {"dead", registration, message id, record, message id, record, ...}.
-- A dead worker's heartbeat is deleted and its id is tombstoned, so that
-- should it be alive after all, its next heartbeat tells it so.

local worker_id = ARGV[1]
local registration = redis.call("hget", KEYS[1], worker_id)
if not registration then
    return {"gone"}
end
if ARGV[2] ~= "1" and redis.call("exists", KEYS[4]) == 1 then
    return {"alive"}
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

redis.call("del", KEYS[4])
redis.call("zadd", KEYS[3], "nx", now, worker_id)
redis.call("zadd", KEYS[2], now + tonumber(ARGV[3]), worker_id)

local result = {"dead", registration}
local records = redis.call("hgetall", KEYS[5])
for i = 1, #records do
    result[#result + 1] = records[i]
end
return result
