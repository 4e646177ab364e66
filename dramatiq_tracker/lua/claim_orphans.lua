-- claim_orphans: take a dead worker's orphans, count each recovery once, and
-- release the uniqueness locks each orphan owns, in one atomic step.
--
-- KEYS[1] inflight      HASH    the dead worker's message id -> in-flight record
-- KEYS[2] running       HASH    message id -> "worker id|token", all workers
-- KEYS[3] outbox        HASH    message id -> {"parked_at": server ms, "record": record} (JSON)
-- KEYS[4..] per orphan, in ARGV order: its history HASH, then, only if it has a lock,
--           its lock HASH and the locks ZSET (lock digest -> expiry), so that no lock
--           key is ever touched where no unique message is involved
--
-- ARGV[1] dead worker id
-- ARGV[2] history_ttl (ms)
-- ARGV[3] mode:
--           "deliver"  the caller delivers the orphans again now (RedisBroker
--                      moves them back; a broker redelivery is starting)
--           "park"     the caller re-enqueues taken records; they wait in the
--                      outbox until it confirms (brokers without redelivery)
--           "await"    the broker redelivers by itself (RabbitMQ): the
--                      recovery is counted when the redelivery starts
-- ARGV[4..] per orphan, five values: message id, lock digest or "", lock mode or "",
--           max_recoveries, "1" when a cancel or abort of it is pending in dramatiq-abort
--
-- An orphan was running when the dead worker has a record for it, or when
-- an earlier claim from the same worker said so (its history names the
-- worker), or when the worker left it awaiting its broker's redelivery.
-- Each running orphan counts one recovery, once per dead worker however
-- many callers race here.  Records move out of the dead worker; only the
-- caller that moved one is told it took it.
--
-- Each orphan gets an outcome, decided once and kept in its history: "drop"
-- when a cancel or abort of it is pending (ARGV, or an intent the tracker
-- persisted: history field abort), "quarantine" when a running orphan's
-- recoveries exceed its max_recoveries, else "deliver".
--
-- A counted orphan's new attempt is its recovery count.  A lock of the same
-- message held by an earlier attempt belongs to the orphan: a
-- "while_executing" lock is deleted (the new attempt takes it when it
-- starts); any other lock passes to the new attempt, keeping its expiry,
-- because the message is queued again.  An orphan that will not run again
-- (dropped, quarantined) loses its lock whatever the mode.  Locks of other
-- messages, and of a newer attempt, are never touched.
--
-- History fields: recoveries, orphaned_from (the dead worker that last
-- counted), orphaned_at (server ms), awaiting_from (a dead worker whose
-- orphan the broker has yet to redeliver).
--
-- Returns, per orphan, {running (0/1), taken (0/1), recoveries, claim age,
-- awaiting (0/1), lock outcome, outcome}: the claim age (ms) tells a caller
-- that did not take a running orphan how long ago another one did, so that
-- it may finish the job of a sweeper that stopped midway; awaiting is 1 when
-- the recovery is left for the broker's redelivery (outcome ""); the lock
-- outcome is "deleted", "transferred" or "".

local worker_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local mode = ARGV[3]
local prefix = worker_id .. "|"
local result = {}

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function decide(history, recoveries, max_recoveries, aborted)
    if aborted or redis.call("hexists", history, "abort") == 1 then
        return "drop"
    end
    if recoveries > max_recoveries then
        return "quarantine"
    end
    return "deliver"
end

-- Count a running orphan's recovery, once per dead worker; returns its count and outcome.
local function count(history, max_recoveries, aborted)
    if redis.call("hget", history, "orphaned_from") == worker_id then
        local recoveries = tonumber(redis.call("hget", history, "recoveries") or "0") or 0
        return recoveries, redis.call("hget", history, "outcome") or "deliver"
    end
    local recoveries = redis.call("hincrby", history, "recoveries", 1)
    local outcome = decide(history, recoveries, max_recoveries, aborted)
    redis.call("hset", history, "orphaned_from", worker_id, "orphaned_at", now, "outcome", outcome)
    redis.call("hdel", history, "awaiting_from")
    redis.call("pexpire", history, ttl)
    return recoveries, outcome
end

local function release(lock, locks, digest, lock_mode, message_id, attempt, outcome)
    if redis.call("hget", lock, "message_id") ~= message_id then
        return ""
    end
    local held_by = tonumber(redis.call("hget", lock, "attempt") or "0") or 0
    if held_by > attempt or (held_by == attempt and outcome == "deliver") then
        return ""
    end
    if lock_mode == "while_executing" or outcome ~= "deliver" then
        redis.call("del", lock)
        redis.call("zrem", locks, digest)
        return "deleted"
    end
    redis.call("hset", lock, "attempt", attempt, "worker", "")
    return "transferred"
end

local key = 4
for i = 4, #ARGV, 5 do
    local message_id, digest, lock_mode = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local max_recoveries, aborted = tonumber(ARGV[i + 3]), ARGV[i + 4] == "1"
    local history = KEYS[key]
    local lock, locks = nil, nil
    key = key + 1
    if digest ~= "" then
        lock, locks = KEYS[key], KEYS[key + 1]
        key = key + 2
    end

    local record = redis.call("hget", KEYS[1], message_id)
    local running, taken, awaiting, owns_locks = 0, 0, 0, false
    local recoveries = tonumber(redis.call("hget", history, "recoveries") or "0") or 0
    local outcome = ""

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
            -- Delivered now, parked, or already redelivered and running elsewhere: then the
            -- attempt running elsewhere holds the locks.
            recoveries, outcome = count(history, max_recoveries, aborted)
            owns_locks = ours or not owner
        end
        if mode == "park" then
            redis.call("hset", KEYS[3], message_id, cjson.encode({parked_at = now, record = record}))
        end
    elseif redis.call("hget", history, "orphaned_from") == worker_id then
        running = 1
        owns_locks = true
        outcome = redis.call("hget", history, "outcome") or "deliver"
    elseif mode == "deliver" and redis.call("hget", history, "awaiting_from") == worker_id then
        -- The broker's redelivery of an orphan a sweeper left awaiting is starting.
        running, taken = 1, 1
        recoveries, outcome = count(history, max_recoveries, aborted)
        owns_locks = true
    else
        -- Only prefetched: it never started, so it is not counted; but a cancelled one stays dead.
        outcome = decide(history, recoveries, math.huge, aborted)
        owns_locks = outcome ~= "deliver"
    end

    local lock_outcome = ""
    if owns_locks and lock then
        lock_outcome = release(lock, locks, digest, lock_mode, message_id, recoveries, outcome)
    end
    local age = 0
    if running == 1 and taken == 0 then
        age = now - (tonumber(redis.call("hget", history, "orphaned_at") or now) or now)
    end
    result[#result + 1] = {running, taken, recoveries, age, awaiting, lock_outcome, outcome}
end
return result
