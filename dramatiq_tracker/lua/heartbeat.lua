-- heartbeat: tell the cluster this worker is alive, judged by the server's clock.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms)
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  this worker's heartbeat
--
-- ARGV[1] worker id
-- ARGV[2] heartbeat_timeout (ms)
--
-- Returns "ok"; "fenced" when this worker was declared dead and its
-- messages recovered (it must stop claiming them and take a new id); or
-- "unknown" when the worker is not registered (the tracker's Redis lost
-- its state: the worker must register again).

local worker_id = ARGV[1]
local timeout = tonumber(ARGV[2])

if redis.call("zscore", KEYS[3], worker_id) then
    return "fenced"
end
if redis.call("hexists", KEYS[1], worker_id) == 0 then
    return "unknown"
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("set", KEYS[4], now, "px", timeout)
redis.call("zadd", KEYS[2], now + timeout, worker_id)
return "ok"
