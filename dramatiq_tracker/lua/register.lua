-- register: add a worker, or re-synchronise it after its tracker Redis lost
-- or dropped its state, writing everything it has in flight.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms)
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  this worker's heartbeat
-- KEYS[5] inflight      HASH    this worker's message id -> in-flight record
-- KEYS[6] running       HASH    message id -> "worker id|token", all workers
-- KEYS[7] host          SET     worker ids registered from this host
-- KEYS[8] broker        SET     worker ids sharing this RedisBroker broker_id (optional)
--
-- ARGV[1] worker id
-- ARGV[2] registration (JSON)
-- ARGV[3] heartbeat_timeout (ms)
-- ARGV[4] the number Z of zombie attempts
-- ARGV[5 .. 5+2Z-1] zombie attempts, as pairs: message id, token
-- ARGV[5+2Z ..] the in-flight records, as triples: message id, token, record (JSON)
--
-- Zombie attempts are copies this process still runs of messages that were
-- recovered from it while it was presumed dead.  They get no record (they
-- are nobody's orphans) but a place in the running index, unless another
-- attempt holds it, so that a redelivery of the message waits for them
-- instead of running beside them.
--
-- Returns "fenced" and writes nothing when this worker id was declared
-- dead (its messages were recovered; it must take a new id), else "ok".

local worker_id = ARGV[1]
local timeout = tonumber(ARGV[3])

if redis.call("zscore", KEYS[3], worker_id) then
    return "fenced"
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

redis.call("hset", KEYS[1], worker_id, ARGV[2])
redis.call("set", KEYS[4], now, "px", timeout)
redis.call("zadd", KEYS[2], now + timeout, worker_id)
redis.call("sadd", KEYS[7], worker_id)
if KEYS[8] then
    redis.call("sadd", KEYS[8], worker_id)
end

-- Forget what was recorded before: it may hold messages that ended while
-- the tracker could not write.
local prefix = worker_id .. "|"
local old = redis.call("hkeys", KEYS[5])
for _, message_id in ipairs(old) do
    local owner = redis.call("hget", KEYS[6], message_id)
    if owner and string.sub(owner, 1, #prefix) == prefix then
        redis.call("hdel", KEYS[6], message_id)
    end
end
redis.call("del", KEYS[5])

local first_record = 5 + 2 * tonumber(ARGV[4])
for i = 5, first_record - 1, 2 do
    redis.call("hsetnx", KEYS[6], ARGV[i], prefix .. ARGV[i + 1])
end
for i = first_record, #ARGV, 3 do
    redis.call("hset", KEYS[5], ARGV[i], ARGV[i + 2])
    redis.call("hset", KEYS[6], ARGV[i], prefix .. ARGV[i + 1])
end
return "ok"
