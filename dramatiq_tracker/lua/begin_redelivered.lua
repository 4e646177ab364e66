-- begin_redelivered: record, before it runs, a message that its broker
-- delivered again (RabbitMQ's redelivered flag).
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
-- registered or was declared dead; else {"ok", recoveries so far, the dead
-- worker whose orphan this is and whose recovery is still to be counted
-- (history field awaiting_from) or "", the previous "worker id|token"
-- recorded running this message or ""}.

local worker_id, message_id = ARGV[1], ARGV[3]
if redis.call("zscore", KEYS[2], worker_id) or redis.call("hexists", KEYS[1], worker_id) == 0 then
    return {"unregistered"}
end

local owner = worker_id .. "|" .. ARGV[2]
local previous = redis.call("hget", KEYS[4], message_id) or ""
if previous == owner then
    previous = ""
end
redis.call("hset", KEYS[3], message_id, ARGV[4])
redis.call("hset", KEYS[4], message_id, owner)

local recoveries = tonumber(redis.call("hget", KEYS[5], "recoveries") or "0") or 0
return {"ok", recoveries, redis.call("hget", KEYS[5], "awaiting_from") or "", previous}
