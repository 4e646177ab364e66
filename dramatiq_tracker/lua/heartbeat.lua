-- heartbeat: tell the cluster this worker is alive, judged by the server's
-- clock, and check that its records are what it wrote (anti-entropy).
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of this worker's broker identity
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  this worker's heartbeat
-- KEYS[5] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[1] worker id
-- ARGV[2] heartbeat_timeout (ms)
-- ARGV[3] the lowest write count the worker expects
-- ARGV[4] the highest write count it expects (writes may be on their way)
--
-- Returns "ok"; "fenced" when this worker was declared dead and its
-- messages recovered (it must stop claiming them and take a new id);
-- "unknown" when it is not registered (the tracker's Redis lost its state);
-- or "diverged" when its write count is not what it expects: writes were
-- lost (a failover, an eviction) and it must write everything again.  The
-- heartbeat is refreshed in the first and last cases.

local workers, deadlines, dead_workers, heartbeat, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local worker_id = ARGV[1]
local timeout = tonumber(ARGV[2])

if redis.call("zscore", dead_workers, worker_id) then
    return "fenced"
end
if redis.call("hexists", workers, worker_id) == 0 then
    return "unknown"
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("set", heartbeat, now, "px", timeout)
redis.call("zadd", deadlines, now + timeout, worker_id)

local seq = tonumber(redis.call("hget", inflight, "__seq__") or "-1")
if seq < tonumber(ARGV[3]) or seq > tonumber(ARGV[4]) then
    return "diverged"
end
return "ok"
