-- register: add a worker, or re-synchronise it after its tracker Redis lost or
-- dropped its state, writing everything it has in flight.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] identities    HASH    broker identity digest -> broker identity
-- KEYS[3] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of this worker's broker identity
-- KEYS[4] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[5] heartbeat     STRING  this worker's heartbeat
-- KEYS[6] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[7] running       HASH    message id -> "worker id|token|retries", all workers
-- KEYS[8] presence      HASH    worker id -> its last heartbeat (server ms), of the workers of this broker
--                               identity whose presence this server sees (see heartbeat)
-- KEYS[9] absent        HASH    worker id -> "since|beat" (see check_presence)
-- KEYS[10] server       HASH    incarnation and since (see heartbeat)
-- KEYS[11] host         SET     worker ids registered from this host
-- KEYS[12] broker       SET     worker ids sharing this RedisBroker broker_id (optional)
--
-- ARGV[1] worker id
-- ARGV[2] registration (JSON)
-- ARGV[3] heartbeat_timeout (ms)
-- ARGV[4] broker identity digest
-- ARGV[5] broker identity
-- ARGV[6] its presence channel when its connection confirmed the subscription, else ""
-- ARGV[7] "1" when presence channels are sharded (Redis Cluster)
-- ARGV[8] the number Z of zombie attempts
-- ARGV[9 .. 9+2Z-1] zombie attempts, as pairs: message id, "token|retries"
-- ARGV[9+2Z ..] in-flight records, as triples: message id, "token|retries", record (JSON)
--
-- An in-flight record takes its message's place in the running index unless
-- another worker's attempt holds it.
--
-- Zombie attempts are copies this process still runs of messages that were
-- recovered from it while it was presumed dead.  They get no record (they
-- are nobody's orphans) but a place in the running index, unless another
-- attempt holds it, so that a redelivery waits for them instead of running
-- beside them.
--
-- Returns {"fenced", ""} and writes nothing when this worker id was declared
-- dead (its messages were recovered; it must take a new id), else {"ok",
-- presence}, presence as heartbeat returns it.  The write count starts
-- again at 0.

-- include: _server
-- include: _worker

local workers, identities, deadlines, dead_workers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local heartbeat, inflight, running, presence, absent = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local server, host, broker = KEYS[10], KEYS[11], KEYS[12]

local worker_id, channel = ARGV[1], ARGV[6]
local timeout = tonumber(ARGV[3])

if redis.call("zscore", dead_workers, worker_id) then
    return {"fenced", ""}
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

server_since(server, now)

redis.call("hset", workers, worker_id, ARGV[2])
redis.call("hset", identities, ARGV[4], ARGV[5])
redis.call("set", heartbeat, now, "px", timeout)
redis.call("zadd", deadlines, now + timeout, worker_id)
redis.call("sadd", host, worker_id)
if broker then
    redis.call("sadd", broker, worker_id)
end
redis.call("hdel", absent, worker_id)
local seen = note_presence(presence, worker_id, channel, ARGV[7] == "1", now)

-- Forget what was recorded before: it may hold messages that ended while
-- the tracker could not write.
local prefix = worker_id .. "|"
forget_running(inflight, running, prefix)
redis.call("del", inflight)
redis.call("hset", inflight, "__seq__", 0)

local first_record = 9 + 2 * tonumber(ARGV[8])
for i = 9, first_record - 1, 2 do
    redis.call("hsetnx", running, ARGV[i], prefix .. ARGV[i + 1])
end
for i = first_record, #ARGV, 3 do
    record_start(inflight, running, prefix, ARGV[i], ARGV[i + 1], ARGV[i + 2])
end
return {"ok", seen}
