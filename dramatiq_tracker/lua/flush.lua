-- flush: write a batch of in-flight changes of one worker.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[3] inflight      HASH    this worker's message id -> in-flight record
-- KEYS[4] running       HASH    message id -> "worker id|token", all workers
-- KEYS[5..] per ended message, in ARGV order: its history HASH
--
-- ARGV[1] worker id
-- ARGV[2] number of started messages, S
-- ARGV[3 .. 3+3S-1] started messages, as triples: message id, token, record (JSON)
-- ARGV[3+3S ..] ended messages, as pairs: message id, token
--
-- An ended message is forgotten only if the record still belongs to the
-- same attempt (token), so a late completion never erases a newer attempt.
-- When a duplicate delivery was put off behind this attempt (history field
-- deferred_behind), its completion is noted (completed_by), so that the
-- duplicate is dropped instead of run again.
--
-- Returns 1, or 0 without writing anything when the worker is not
-- registered or was declared dead.

local worker_id = ARGV[1]
if redis.call("zscore", KEYS[2], worker_id) or redis.call("hexists", KEYS[1], worker_id) == 0 then
    return 0
end

local prefix = worker_id .. "|"
local started = tonumber(ARGV[2])
local first_end = 3 + 3 * started

for i = 3, first_end - 1, 3 do
    redis.call("hset", KEYS[3], ARGV[i], ARGV[i + 2])
    redis.call("hset", KEYS[4], ARGV[i], prefix .. ARGV[i + 1])
end

local history = 5
for i = first_end, #ARGV, 2 do
    local message_id, token = ARGV[i], ARGV[i + 1]
    local owner = prefix .. token
    if redis.call("hget", KEYS[history], "deferred_behind") == owner then
        redis.call("hset", KEYS[history], "completed_by", owner)
    end
    history = history + 1
    if redis.call("hget", KEYS[4], message_id) == owner then
        redis.call("hdel", KEYS[4], message_id)
    end
    local record = redis.call("hget", KEYS[3], message_id)
    if record then
        local ok, decoded = pcall(cjson.decode, record)
        if not ok or type(decoded) ~= "table" or decoded["token"] == token then
            redis.call("hdel", KEYS[3], message_id)
        end
    end
end
return 1
