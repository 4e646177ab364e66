-- begin_redelivered: record, before it runs, a message that its broker
-- delivered again (RabbitMQ's redelivered flag), and count the recovery
-- a sweeper left for this moment.
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
-- ARGV[5] history_ttl (ms)
--
-- When a sweeper found this message orphaned by a dead worker and left it
-- for the broker to deliver again (history field awaiting_from), this
-- counts that recovery, once.
--
-- Returns {"unregistered"} without writing when this worker is not
-- registered or was declared dead; else {"ok", recoveries, the dead worker
-- whose recovery this counted or "", the previous "worker id|token" that
-- was recorded running this message or ""}.

local worker_id, message_id = ARGV[1], ARGV[3]
if redis.call("zscore", KEYS[2], worker_id) or redis.call("hexists", KEYS[1], worker_id) == 0 then
    return {"unregistered"}
end

local recovered_from = ""
local awaiting = redis.call("hget", KEYS[5], "awaiting_from")
if awaiting then
    redis.call("hdel", KEYS[5], "awaiting_from")
    if redis.call("hget", KEYS[5], "orphaned_from") ~= awaiting then
        local time = redis.call("time")
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        redis.call("hincrby", KEYS[5], "recoveries", 1)
        redis.call("hset", KEYS[5], "orphaned_from", awaiting, "orphaned_at", now)
        redis.call("pexpire", KEYS[5], tonumber(ARGV[5]))
        recovered_from = awaiting
    end
end
local recoveries = tonumber(redis.call("hget", KEYS[5], "recoveries") or "0") or 0

local owner = worker_id .. "|" .. ARGV[2]
local previous = redis.call("hget", KEYS[4], message_id) or ""
if previous == owner then
    previous = ""
end
redis.call("hset", KEYS[3], message_id, ARGV[4])
redis.call("hset", KEYS[4], message_id, owner)
return {"ok", recoveries, recovered_from, previous}
