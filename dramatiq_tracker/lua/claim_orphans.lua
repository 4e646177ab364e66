-- claim_orphans: take a dead worker's orphans, count each recovery once, give
-- every copy that recovery moves a new attempt, and release the uniqueness
-- locks each orphan owns, in one atomic step.
--
-- KEYS[1] inflight      HASH    the dead worker's message id -> in-flight record
-- KEYS[2] running       HASH    message id -> "worker id|token|retries", all workers
-- KEYS[3] outbox        HASH    message id -> {"parked_at", "record", "worker", "token"} (JSON), of the caller's broker identity
-- KEYS[4] revoked       HASH    the dead worker's message id -> the attempt that superseded its copies
-- KEYS[5] recovery      HASH    the dead worker's recovery claim (see the fragment _recovery)
-- KEYS[6] counters      HASH    where the recovery latency is counted (see the fragment _latency)
-- KEYS[7..] per orphan, in ARGV order: its history HASH, then, only if it has a lock,
--           its lock HASH and the locks ZSET (lock digest -> expiry), so that no lock
--           key is ever touched where no unique message is involved
--
-- ARGV[1] dead worker id
-- ARGV[2] history_ttl (ms)
-- ARGV[3] mode:
--           "deliver"  the caller delivers the orphans again now (RedisBroker
--                      moves them back, running, prefetched and delayed alike;
--                      a broker redelivery is starting)
--           "park"     the caller re-enqueues taken records; they wait in the
--                      outbox until it confirms (brokers without redelivery)
--           "await"    the broker redelivers by itself (RabbitMQ): the
--                      recovery is counted when the redelivery starts
-- ARGV[4] a JSON array with, per orphan, an array of six values: message id,
--         the attempt of the copy the caller found (0 when unknown), lock
--         digest or "", lock mode or "", max_recoveries, 1 when a cancel or
--         abort of it is pending (else 0)
-- ARGV[5] "1" for a dry run: decide and reply as a claim would, write nothing
-- ARGV[6] the sweeper's recovery claim token; "" for a start that claims the orphan it is
--         about to run (a broker's redelivery, a put-off copy whose twin died)
-- ARGV[7] for a start: its attempt's "worker id|token|retries", which takes the dead attempt's
--         place in the running index in the same step, so that a copy delivered meanwhile is put
--         off behind it rather than run beside it; else ""
--
-- A sweeper claims only under its recovery claim: when the token is not the
-- claim's any more (another sweeper took the recovery over), the reply is
-- "fenced" and nothing is done.
--
-- An orphan was running when the dead worker has a record for it, or when
-- an earlier claim from the same worker said so (its history names the
-- worker), or when the worker left it awaiting its broker's redelivery.
-- Each running orphan counts one recovery, once per dead worker however
-- many callers race here.  Records move out of the dead worker; only the
-- caller that moved one is told it took it.
--
-- Every orphan that is delivered again (running or not) gets a new attempt,
-- higher than any before, once per dead worker; the dead worker's revoked
-- list remembers it, so that copies the worker still holds, should it be
-- alive after all, are known to be stale.  Each orphan gets an outcome,
-- decided once and kept in its history: "drop" when a cancel or abort of it
-- is pending (ARGV, or an intent the tracker persisted: history field
-- abort), "quarantine" when a running orphan's recoveries exceed its
-- max_recoveries, else "deliver".
--
-- A lock of the same message held by an older attempt belongs to the
-- orphan: a "while_executing" lock is deleted (the new attempt takes it
-- when it starts); any other lock passes to the new attempt, keeping its
-- expiry, because the message is queued again.  An orphan that will not run
-- again (dropped, quarantined) loses its lock whatever the mode.  Locks of
-- other messages, and of the new attempt or a newer one, are never touched.
--
-- History fields: recoveries, attempt, orphaned_from (the dead worker that
-- last moved it), orphaned_at (server ms), orphaned_running (1 when it was
-- running), orphaned_by ("sweep", or "start" when a starting copy took it:
-- that copy runs it, and the dead worker's copies of it are stale), outcome,
-- dead_since (when the dead worker died: from its recovery HASH, see
-- declare_dead), restarted (when its recovered copy
-- first started: its recovery latency was counted then, by begin_at_risk or
-- by the start that took it here), awaiting_from (a dead worker whose orphan the broker
-- has yet to redeliver).
--
-- Returns a JSON array with, per orphan, [running (0/1), taken (0/1),
-- recoveries, attempt, by start (0/1), awaiting (0/1), lock outcome, outcome]:
-- by start is 1 when a starting copy took it earlier (it runs there);
-- awaiting is 1 when the recovery is left for the broker's redelivery
-- (outcome ""); the lock outcome is "deleted", "transferred" or "".

-- include: _latency

local inflight, running, outbox, revoked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local worker_id = ARGV[1]
local ttl = tonumber(ARGV[2])
local mode = ARGV[3]
local dry_run = ARGV[5] == "1"
local token = ARGV[6]

if token ~= "" and not dry_run and redis.call("hget", KEYS[5], "token") ~= token then
    return "fenced"
end
local taker = token ~= "" and "sweep" or "start"
local starting = ARGV[7] or ""
local dead_since = tonumber(redis.call("hget", KEYS[5], "dead_since"))
local counters = KEYS[6]

-- Every write goes through here: a dry run (a plan) reads and decides, and changes nothing.
local function write(...)
    if not dry_run then
        return redis.call(...)
    end
end
local prefix = worker_id .. "|"
local result = {}

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- The history fields a claim reads, in one call.
local function read(history)
    local h = redis.call("hmget", history, "recoveries", "attempt", "orphaned_from", "outcome", "orphaned_running",
        "awaiting_from", "abort", "orphaned_at", "orphaned_by", "restarted", "dead_since")
    return {
        recoveries = tonumber(h[1] or "0") or 0,
        attempt = tonumber(h[2] or "0") or 0,
        orphaned_from = h[3],
        outcome = h[4] or "deliver",
        orphaned_running = tonumber(h[5] or "0") or 0,
        awaiting_from = h[6],
        abort = h[7],
        orphaned_at = tonumber(h[8] or "0") or 0,
        orphaned_by = h[9],
        restarted = h[10],
        dead_since = tonumber(h[11]),
    }
end

local function decide(h, recoveries, max_recoveries, aborted)
    if aborted or h.abort then
        return "drop"
    end
    if recoveries > max_recoveries then
        return "quarantine"
    end
    return "deliver"
end

-- When its worker died, and, for a copy that starts now (a start takes it), the recovery latency.
local function note_death(history, h)
    local since = dead_since or h.dead_since
    if not since then
        return
    end
    write("hset", history, "dead_since", since)
    if taker == "start" and not h.restarted then
        write("hset", history, "restarted", now)
        if not dry_run then
            count_latency(counters, now - since)
        end
    elseif taker == "sweep" then
        write("hdel", history, "restarted")
    end
end

-- The revoked list's new entries (message id, attempt, ...), written at the end in one call.
local revisions = {}

-- Move an orphan to a new attempt, once per dead worker; count its recovery if it was running.
local function move(history, h, message_id, current, max_recoveries, aborted, was_running)
    if h.orphaned_from == worker_id then
        return h.recoveries, h.attempt, h.outcome
    end
    local attempt = math.max(h.attempt, current) + 1
    local recoveries = h.recoveries
    local limit = math.huge
    if was_running then
        recoveries = recoveries + 1
        limit = max_recoveries
    end
    local outcome = decide(h, recoveries, limit, aborted)
    write(
        "hset", history,
        "recoveries", recoveries, "attempt", attempt, "orphaned_from", worker_id, "orphaned_at", now,
        "orphaned_running", was_running and 1 or 0, "orphaned_by", taker, "outcome", outcome
    )
    if h.awaiting_from then
        write("hdel", history, "awaiting_from")
    end
    note_death(history, h)
    write("pexpire", history, ttl)
    revisions[#revisions + 1] = message_id
    revisions[#revisions + 1] = attempt
    return recoveries, attempt, outcome
end

local function release(lock, locks, digest, lock_mode, message_id, attempt, outcome)
    local held = redis.call("hmget", lock, "message_id", "attempt")
    if held[1] ~= message_id then
        return ""
    end
    if (tonumber(held[2] or "0") or 0) >= attempt then
        return ""
    end
    if lock_mode == "while_executing" or outcome ~= "deliver" then
        write("del", lock)
        write("zrem", locks, digest)
        return "deleted"
    end
    write("hset", lock, "attempt", attempt, "worker", "")
    return "transferred"
end

local orphans = cjson.decode(ARGV[4])

-- Read the dead worker's records and the running index for every orphan at once, and write
-- what they lose at the end, in one call each: most of the cost of a claim is per call.
local ids = {}
for i, orphan in ipairs(orphans) do
    ids[i] = orphan[1]
end
local records, owners = {}, {}
for start = 1, #ids, 1000 do
    local chunk = {unpack(ids, start, math.min(start + 999, #ids))}
    local found = redis.call("hmget", inflight, unpack(chunk))
    local owned = redis.call("hmget", running, unpack(chunk))
    for j = 1, #chunk do
        records[start + j - 1] = found[j]
        owners[start + j - 1] = owned[j]
    end
end
local unrecorded, unindexed, seen = {}, {}, {}

-- A starting copy takes the dead attempt's place in the running index (or an empty one).
local function take_place(message_id, owner)
    if starting ~= "" and (not owner or string.sub(owner, 1, #prefix) == prefix) then
        write("hset", running, message_id, starting)
    end
end

local key = 7
for i, orphan in ipairs(orphans) do
    local message_id, current, digest, lock_mode = orphan[1], tonumber(orphan[2]) or 0, orphan[3], orphan[4]
    local max_recoveries, aborted = tonumber(orphan[5]), orphan[6] == 1
    local history = KEYS[key]
    local lock, locks = nil, nil
    key = key + 1
    if digest ~= "" then
        lock, locks = KEYS[key], KEYS[key + 1]
        key = key + 2
    end

    -- A message listed twice is taken once: the second time, its record is gone.
    local record = records[i]
    if seen[message_id] then
        record = nil
    end
    seen[message_id] = true
    local h = read(history)
    local was_running, taken, awaiting, owns_locks, by_start = 0, 0, 0, false, 0
    local recoveries, attempt, outcome = h.recoveries, current, ""

    if record then
        was_running, taken = 1, 1
        unrecorded[#unrecorded + 1] = message_id
        local owner = owners[i]
        local ours = owner and string.sub(owner, 1, #prefix) == prefix
        if starting ~= "" then
            take_place(message_id, owner)
        elseif ours then
            unindexed[#unindexed + 1] = message_id
        end
        if mode == "await" and (ours or not owner) then
            note_death(history, h)
            write("hset", history, "awaiting_from", worker_id)
            write("pexpire", history, ttl)
            awaiting = 1
        else
            -- Delivered now, parked, or already redelivered and running elsewhere: then the
            -- attempt running elsewhere holds the locks.
            recoveries, attempt, outcome = move(history, h, message_id, current, max_recoveries, aborted, true)
            owns_locks = ours or not owner
        end
        if mode == "park" then
            local entry = {parked_at = now, record = record, worker = worker_id, token = token}
            write("hset", outbox, message_id, cjson.encode(entry))
        end
    elseif h.orphaned_from == worker_id then
        -- Another caller moved it from this worker already: report what it decided.
        was_running = h.orphaned_running
        recoveries, attempt, outcome = h.recoveries, h.attempt, h.outcome
        owns_locks = true
        if h.orphaned_by == "start" then
            by_start = 1
        end
    elseif mode == "deliver" and h.awaiting_from == worker_id then
        -- The broker's redelivery of an orphan a sweeper left awaiting is starting.
        was_running, taken = 1, 1
        take_place(message_id, owners[i])
        recoveries, attempt, outcome = move(history, h, message_id, current, max_recoveries, aborted, true)
        owns_locks = true
    elseif mode == "deliver" then
        -- Prefetched, delayed, or started but not recorded yet: moved, not counted; a cancelled one stays dead.
        take_place(message_id, owners[i])
        recoveries, attempt, outcome = move(history, h, message_id, current, max_recoveries, aborted, false)
        owns_locks = true
    end

    local lock_outcome = ""
    if owns_locks and lock then
        lock_outcome = release(lock, locks, digest, lock_mode, message_id, attempt, outcome)
    end
    result[#result + 1] = {was_running, taken, recoveries, attempt, by_start, awaiting, lock_outcome, outcome}
end

for start = 1, #unrecorded, 1000 do
    write("hdel", inflight, unpack(unrecorded, start, math.min(start + 999, #unrecorded)))
end
for start = 1, #unindexed, 1000 do
    write("hdel", running, unpack(unindexed, start, math.min(start + 999, #unindexed)))
end
for start = 1, #revisions, 500 do
    write("hset", revoked, unpack(revisions, start, math.min(start + 499, #revisions)))
end
if #revisions > 0 then
    write("pexpire", revoked, ttl)
end
return cjson.encode(result)
