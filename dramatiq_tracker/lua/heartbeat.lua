-- heartbeat: tell the cluster this worker is alive, judged by the server's
-- clock; check that its records are what it wrote (anti-entropy), and that
-- this server sees its presence.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of this worker's broker identity
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  this worker's heartbeat
-- KEYS[5] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[6] presence      HASH    worker id -> its last heartbeat (server ms), of the workers of this broker
--                               identity whose presence this server sees
-- KEYS[7] absent        HASH    worker id -> "since|beat": when a sweeper found its presence gone, and
--                               its last heartbeat then (see check_presence)
-- KEYS[8] server        HASH    incarnation -> the server's run id and replication id; since -> when the
--                               namespace first saw this incarnation (server ms)
--
-- ARGV[1] worker id
-- ARGV[2] heartbeat_timeout (ms)
-- ARGV[3] the lowest write count the worker expects
-- ARGV[4] the highest write count it expects (writes may be on their way)
-- ARGV[5] its presence channel when its connection confirmed the subscription, else ""
-- ARGV[6] "1" when presence channels are sharded (Redis Cluster)
--
-- Returns {status, presence}.  Status: "ok"; "fenced" when this worker was
-- declared dead and its messages recovered (it must stop claiming them and
-- take a new id); "unknown" when it is not registered (the tracker's Redis
-- lost its state); or "diverged" when its write count is not what it
-- expects: writes were lost (a failover, an eviction) and it must write
-- everything again.  The heartbeat is refreshed in the first and last cases.
-- Presence: "seen" when its channel has a subscriber on this server,
-- "unseen" when it claims one and this server has none (its subscription
-- reaches another server, or a proxy holds it), "" when it claims none.

-- include: _server
-- include: _worker

local workers, deadlines, dead_workers, heartbeat, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local presence, absent, server = KEYS[6], KEYS[7], KEYS[8]

local worker_id, channel = ARGV[1], ARGV[5]
local timeout = tonumber(ARGV[2])

if redis.call("zscore", dead_workers, worker_id) then
    return {"fenced", ""}
end
if redis.call("hexists", workers, worker_id) == 0 then
    return {"unknown", ""}
end

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- A restart changes the server's run id, a promotion its replication id: the namespace notes when it
-- first saw this one, and no death is judged until its workers have had time to reach it.
server_since(server, now)

redis.call("set", heartbeat, now, "px", timeout)
redis.call("zadd", deadlines, now + timeout, worker_id)
redis.call("hdel", absent, worker_id)

local seen = note_presence(presence, worker_id, channel, ARGV[6] == "1", now)

local seq = tonumber(redis.call("hget", inflight, "__seq__") or "-1")
if seq < tonumber(ARGV[3]) or seq > tonumber(ARGV[4]) then
    return {"diverged", seen}
end
return {"ok", seen}
