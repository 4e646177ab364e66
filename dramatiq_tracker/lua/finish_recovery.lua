-- finish_recovery: forget a dead worker once its orphans are delivered again.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of its broker identity
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  the worker's heartbeat
-- KEYS[5] inflight      HASH    the worker's message id -> in-flight record
-- KEYS[6] running       HASH    message id -> "worker id|token|retries", all workers
-- KEYS[7] presence      HASH    worker id -> its last heartbeat, of the workers whose presence is seen
-- KEYS[8] absent        HASH    worker id -> "since|beat" (see check_presence)
-- KEYS[9] recovery      HASH    the worker's recovery claim (see the fragment _recovery)
-- KEYS[10] host         SET     worker ids registered from the worker's host
-- KEYS[11] broker       SET     worker ids sharing its broker_id (optional)
--
-- ARGV[1] worker id
-- ARGV[2] history_ttl (ms): tombstones of workers dead for longer are pruned
-- ARGV[3] the caller's recovery claim token, or "" (an operator's command)
--
-- The tombstone of this worker stays (and its revoked list, which expires
-- on its own), so that a zombie learns its fate.
-- Returns 1, or 0 when the worker was not declared dead, or when the caller's
-- claim was taken over by another sweeper, which finishes the recovery
-- (nothing done).  The claim goes with the worker.

-- include: _worker

local workers, deadlines, dead_workers, heartbeat = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inflight, running, presence, absent = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local recovery, host, broker = KEYS[9], KEYS[10], KEYS[11]

local worker_id = ARGV[1]
if not redis.call("zscore", dead_workers, worker_id) then
    return 0
end
if ARGV[3] ~= "" and redis.call("hget", recovery, "token") ~= ARGV[3] then
    return 0
end

forget_running(inflight, running, worker_id .. "|")
redis.call("del", heartbeat, inflight, recovery)
redis.call("hdel", presence, worker_id)
redis.call("hdel", absent, worker_id)
unregister(workers, deadlines, host, broker, worker_id)

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("zremrangebyscore", dead_workers, "-inf", now - tonumber(ARGV[2]))
return 1
