-- begin_at_risk: record, before it runs, a message whose start must not be
-- missed, and tell the caller what is known about it.  These are messages
-- delivered again (RabbitMQ's redelivered flag, the tracker's own marks),
-- duplicates that were put off, and messages of at-most-once actors
-- (max_recoveries=0), whose crash must be seen even if it is immediate.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[3] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[4] running       HASH    message id -> "worker id|token|retries", all workers
-- KEYS[5] history       HASH    the message's history
-- KEYS[6] counters      HASH    where the recovery latency is counted (see the fragment _latency)
--
-- ARGV[1] this worker's id
-- ARGV[2] this attempt's "token|retries"
-- ARGV[3] message id
-- ARGV[4] in-flight record (JSON)
-- ARGV[5] for a copy enqueued again from the outbox, "<attempt>|<claim token>" (see COPY_OPTION); else ""
-- ARGV[6] history_ttl (ms)
--
-- Returns {"fenced"} or {"unknown"} without writing when this worker was
-- declared dead or is not registered; else {"ok", the previous "worker
-- id|token|retries" recorded running this message or "", then the
-- history's fields and values}, and counts one write.  A previous attempt
-- that is still recorded keeps its place in the running index, and, when it
-- runs in this same worker, its record: the caller decides whether it ended,
-- is a dead worker's orphan to claim, or a live duplicate to wait for.
-- The first start of a dead worker's orphan delivered again counts its
-- recovery latency (history fields dead_since, restarted: see claim_orphans).
-- The first copy of a recovered attempt to start notes itself (history field
-- copy): a twin of it, enqueued under another claim token (a sweeper whose
-- claim was taken over while it enqueued), finds the field naming another
-- copy of its attempt, and the caller drops it.

-- include: _latency

local workers, dead_workers, inflight, running, history = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local counters = KEYS[6]

local worker_id, message_id = ARGV[1], ARGV[3]
if redis.call("zscore", dead_workers, worker_id) then
    return {"fenced"}
end
if redis.call("hexists", workers, worker_id) == 0 then
    return {"unknown"}
end

local prefix = worker_id .. "|"
local owner = prefix .. ARGV[2]
local previous = redis.call("hget", running, message_id) or ""
if previous == "" or previous == owner then
    previous = ""
    redis.call("hset", running, message_id, owner)
end
if string.sub(previous, 1, #prefix) ~= prefix then
    redis.call("hset", inflight, message_id, ARGV[4])
end
redis.call("hincrby", inflight, "__seq__", 1)

local death = redis.call("hmget", history, "dead_since", "restarted")
if death[1] and not death[2] then
    local time = redis.call("time")
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    redis.call("hset", history, "restarted", now)
    count_latency(counters, now - (tonumber(death[1]) or now))
end

local copy = ARGV[5] or ""
if copy ~= "" then
    local noted = redis.call("hget", history, "copy")
    local attempt = string.match(copy, "^(%d+)|")
    if not noted or string.match(noted, "^(%d+)|") ~= attempt then
        redis.call("hset", history, "copy", copy)
        if redis.call("pttl", history) < 0 then
            redis.call("pexpire", history, ARGV[6])
        end
    end
end

local result = {"ok", previous}
for _, item in ipairs(redis.call("hgetall", history)) do
    result[#result + 1] = item
end
return result
