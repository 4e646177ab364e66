-- claim_orphans: take a dead worker's orphans, counting each recovery once.
--
-- KEYS[1] inflight      HASH    the dead worker's message id -> in-flight record
-- KEYS[2] running       HASH    message id -> "worker id|token", all workers
-- KEYS[3] outbox        HASH    message id -> {"parked_at": server ms, "record": record} (JSON)
-- KEYS[4..] one per orphan, in ARGV order: that message's history HASH
--
-- ARGV[1] dead worker id
-- ARGV[2] history_ttl (ms)
-- ARGV[3] mode:
--           "requeue"  the caller moves the orphans back itself (RedisBroker)
--           "park"     the caller re-enqueues taken records; they wait in the
--                      outbox until it confirms (brokers without redelivery)
--           "await"    the broker redelivers by itself (RabbitMQ): the
--                      recovery is counted when the redelivery starts
-- ARGV[4..] one per orphan: its message id
--
-- An orphan was running when the dead worker has a record for it, or when
-- an earlier, interrupted claim from the same worker already said so (its
-- history names the worker).  Each running orphan counts one recovery,
-- once per dead worker however many sweepers race here.  Records move out
-- of the dead worker; only the caller that moved one is told it took it.
--
-- History fields: recoveries (count), orphaned_from (the dead worker that
-- last counted), orphaned_at (when, server ms), awaiting_from (a dead
-- worker whose orphan the broker has yet to redeliver).
--
-- Returns, per orphan, {running (0/1), taken (0/1), recoveries, claim age,
-- awaiting (0/1)}: the claim age (ms) tells a caller that did not take a
-- running orphan how long ago another one did, so that it may finish the
-- job of a sweeper that stopped midway; awaiting is 1 when the recovery
-- is left to be counted when the broker delivers the orphan again.

local worker_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local mode = ARGV[3]
local prefix = worker_id .. "|"
local result = {}

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function count(history)
    if redis.call("hget", history, "orphaned_from") == worker_id then
        return tonumber(redis.call("hget", history, "recoveries") or "0") or 0
    end
    local recoveries = redis.call("hincrby", history, "recoveries", 1)
    redis.call("hset", history, "orphaned_from", worker_id, "orphaned_at", now)
    redis.call("pexpire", history, ttl)
    return recoveries
end

for i = 4, #ARGV do
    local message_id = ARGV[i]
    local history = KEYS[i]
    local record = redis.call("hget", KEYS[1], message_id)
    local running, taken, awaiting = 0, 0, 0
    local recoveries = tonumber(redis.call("hget", history, "recoveries") or "0") or 0

    if record then
        running, taken = 1, 1
        redis.call("hdel", KEYS[1], message_id)
        local owner = redis.call("hget", KEYS[2], message_id)
        local ours = owner and string.sub(owner, 1, #prefix) == prefix
        if ours then
            redis.call("hdel", KEYS[2], message_id)
        end
        if mode == "await" and (ours or not owner) then
            redis.call("hset", history, "awaiting_from", worker_id)
            redis.call("pexpire", history, ttl)
            awaiting = 1
        else
            -- Requeued or parked now, or already redelivered and running elsewhere.
            recoveries = count(history)
        end
        if mode == "park" then
            redis.call("hset", KEYS[3], message_id, cjson.encode({parked_at = now, record = record}))
        end
    elseif redis.call("hget", history, "orphaned_from") == worker_id then
        running = 1
    end
    local age = 0
    if running == 1 and taken == 0 then
        age = now - (tonumber(redis.call("hget", history, "orphaned_at") or now) or now)
    end
    result[#result + 1] = {running, taken, recoveries, age, awaiting}
end
return result
