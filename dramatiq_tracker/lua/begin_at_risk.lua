-- begin_at_risk: record, before it runs, a message whose start must not be
-- missed, and tell the caller what is known about it.  These are messages
-- delivered again (RabbitMQ's redelivered flag, the tracker's own marks),
-- duplicates that were put off, and messages of at-most-once actors
-- (max_recoveries=0), whose crash must be seen even if it is immediate.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[3] inflight      HASH    this worker's message id -> in-flight record
-- KEYS[4] running       HASH    message id -> "worker id|token", all workers
-- KEYS[5] history       HASH    the message's history
--
-- ARGV[1] this worker's id
-- ARGV[2] this attempt's token
-- ARGV[3] message id
-- ARGV[4] in-flight record (JSON)
--
-- Returns {"unregistered"} without writing when this worker is not
-- registered or was declared dead; else {"ok", the previous "worker
-- id|token" recorded running this message or "", then the history's
-- fields and values}.  A previous attempt that is still recorded keeps its
-- place in the running index, and, when it runs in this same worker, its
-- record: the caller decides whether it is a dead worker's orphan to claim,
-- or a live duplicate to wait for.

local worker_id, message_id = ARGV[1], ARGV[3]
if redis.call("zscore", KEYS[2], worker_id) or redis.call("hexists", KEYS[1], worker_id) == 0 then
    return {"unregistered"}
end

local prefix = worker_id .. "|"
local owner = prefix .. ARGV[2]
local previous = redis.call("hget", KEYS[4], message_id) or ""
if previous == "" or previous == owner then
    previous = ""
    redis.call("hset", KEYS[4], message_id, owner)
end
if string.sub(previous, 1, #prefix) ~= prefix then
    redis.call("hset", KEYS[3], message_id, ARGV[4])
end

local result = {"ok", previous}
for _, item in ipairs(redis.call("hgetall", KEYS[5])) do
    result[#result + 1] = item
end
return result
