-- declare_dead: confirm that a worker is dead and fence it, atomically.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of the caller's broker identity
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  the worker's heartbeat
-- KEYS[5] inflight      HASH    the worker's message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[1] worker id
-- ARGV[2] "1" when the caller saw its process gone (the heartbeat may
--         still be fresh), "0" when death is judged by the heartbeat only
-- ARGV[3] retry_after (ms): when to look at this worker again should the
--         recovery that follows be interrupted
-- ARGV[4] "1" for a dry run: tell, change nothing
--
-- Returns {"gone"} when the worker is not registered (its deadline entry is
-- removed, so that it never blocks the others), {"alive"} when its heartbeat
-- is fresh and its process was not seen gone (its deadline is set to its
-- heartbeat's expiry), else {"dead", registration,
-- message id, record, message id, record, ...}.  A dead worker's heartbeat
-- is deleted and its id is tombstoned, so that should it be alive after all,
-- its next heartbeat tells it so.

local workers, deadlines, dead_workers, heartbeat, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local worker_id = ARGV[1]
local dry_run = ARGV[4] == "1"
local registration = redis.call("hget", workers, worker_id)
if not registration then
    if not dry_run then
        redis.call("zrem", deadlines, worker_id)
    end
    return {"gone"}
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

if ARGV[2] ~= "1" then
    local remaining = redis.call("pttl", heartbeat)
    if remaining > 0 then
        -- Alive: its deadline follows its heartbeat, should the two have drifted apart.
        if not dry_run then
            redis.call("zadd", deadlines, now + remaining, worker_id)
        end
        return {"alive"}
    end
end

if not dry_run then
    redis.call("del", heartbeat)
    redis.call("zadd", dead_workers, "nx", now, worker_id)
    redis.call("zadd", deadlines, now + tonumber(ARGV[3]), worker_id)
end

local result = {"dead", registration}
local records = redis.call("hgetall", inflight)
for i = 1, #records, 2 do
    if records[i] ~= "__seq__" then
        result[#result + 1] = records[i]
        result[#result + 1] = records[i + 1]
    end
end
return result
