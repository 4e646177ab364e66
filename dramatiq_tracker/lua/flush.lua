-- flush: write a batch of in-flight changes of one worker.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[3] inflight      HASH    this worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[4] running       HASH    message id -> "worker id|token|retries", all workers
-- KEYS[5..] per ended message, in ARGV order: its history HASH
--
-- ARGV[1] worker id
-- ARGV[2] the lowest write count the worker expects
-- ARGV[3] the highest write count it expects (writes may be on their way)
-- ARGV[4] number of started messages, S
-- ARGV[5 .. 5+3S-1] started messages, as triples: message id, "token|retries", record (JSON)
-- ARGV[5+3S ..] ended messages, as triples: message id, token, "ack", "nack"
--               or "void" (a zombie's failure: the attempt that replaced it decides)
--
-- An ended message is forgotten only if the record still belongs to the
-- same attempt (token), so a late completion never erases a newer attempt.
-- When a duplicate delivery was put off behind this attempt (history field
-- deferred_behind), its completion is noted (completed_by, and
-- completed_with: "ack" or "nack"), so that the duplicate is dropped, or
-- dead-lettered, instead of run again; after a "void" end nothing is noted,
-- and the duplicate runs.
--
-- Returns "ok" and counts one write; or, writing nothing: "fenced" (declared
-- dead), "unknown" (not registered) or "diverged" (writes were lost).

-- include: _worker

local workers, dead_workers, inflight, running = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local worker_id = ARGV[1]
if redis.call("zscore", dead_workers, worker_id) then
    return "fenced"
end
if redis.call("hexists", workers, worker_id) == 0 then
    return "unknown"
end
local seq = tonumber(redis.call("hget", inflight, "__seq__") or "-1")
if seq < tonumber(ARGV[2]) or seq > tonumber(ARGV[3]) then
    return "diverged"
end

local prefix = worker_id .. "|"
local started = tonumber(ARGV[4])
local first_end = 5 + 3 * started

for i = 5, first_end - 1, 3 do
    -- Another attempt that the index names (a duplicate delivery no start check caught) keeps its place.
    record_start(inflight, running, prefix, ARGV[i], ARGV[i + 1], ARGV[i + 2])
end

local history = 5
for i = first_end, #ARGV, 3 do
    local message_id, token, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local attempt = prefix .. token
    if outcome ~= "void" and redis.call("hget", KEYS[history], "deferred_behind") == attempt then
        redis.call("hset", KEYS[history], "completed_by", attempt, "completed_with", outcome)
    end
    history = history + 1
    local owner = redis.call("hget", running, message_id)
    if owner and string.sub(owner, 1, #attempt + 1) == attempt .. "|" then
        redis.call("hdel", running, message_id)
    end
    local record = redis.call("hget", inflight, message_id)
    if record then
        local ok, decoded = pcall(cjson.decode, record)
        -- A record is a JSON array whose fourth value is its attempt's token.
        if not ok or type(decoded) ~= "table" or decoded[4] == token then
            redis.call("hdel", inflight, message_id)
        end
    end
end
redis.call("hincrby", inflight, "__seq__", 1)
return "ok"
