-- requeue_orphans: settle a dead RedisBroker process's un-acked messages:
-- move them back onto their queues, dead-letter them, or drop them.  Runs
-- on the broker's Redis, on Dramatiq's keys (dramatiq/brokers/redis/dispatch.lua).
--
-- KEYS, five per queue:
--   acks           SET   $namespace:__acks__.$broker_id.$queue, the dead process's un-acked ids
--   queue          LIST  $namespace:$queue
--   messages       HASH  $namespace:$queue.msgs, redis message id -> payload
--   dead letters   ZSET  $namespace:$canonical_queue.XQ, redis message id -> when dead-lettered
--   dead messages  HASH  $namespace:$canonical_queue.XQ.msgs
--
-- ARGV[1] the time (ms) to stamp dead letters with, as Dramatiq's nack does
-- ARGV[2..], five per orphan:
--   the index (1-based) of its queue's five keys
--   its redis message id
--   "requeue", "deadletter" or "drop"
--   the redis message id to requeue it under, or "" to keep its own
--   a replacement payload, or "" to keep the stored one
--
-- Each orphan is settled only if this call removes it from the acks set, so
-- racing sweepers and Dramatiq's own maintenance settle it exactly once.  A
-- requeued orphan goes to the head of its queue (it was dequeued once
-- already and should not wait behind the whole queue again), under a new
-- redis message id when one is given: the copy a worker declared dead may
-- still hold then acks nothing but its own stale id.  A dead-lettered one
-- goes where Dramatiq's nack puts it.
--
-- Returns two lists of orphans, each by its position in ARGV (1-based, the
-- first orphan's five values being ARGV[2..6]): those no longer in the acks
-- set (someone else settled them: another sweeper, or Dramatiq's
-- maintenance), and those whose payload was gone (nothing to deliver).  This
-- call settled every other orphan: a sweep settles thousands, and the
-- exceptions are few.

local raced, missing = {}, {}
local now = ARGV[1]

-- Writes to each queue's keys, made at the end in a few calls: most of the cost is per call.
local puts, pushes, deletions = {}, {}, {}
local function add(lists, queue, ...)
    local list = lists[queue]
    if not list then
        list = {}
        lists[queue] = list
    end
    for _, value in ipairs({...}) do
        list[#list + 1] = value
    end
end

for i = 2, #ARGV, 5 do
    local queue = tonumber(ARGV[i])
    local base = (queue - 1) * 5
    local acks, messages = KEYS[base + 1], KEYS[base + 3]
    local id, action, new_id, payload = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local position = (i + 3) / 5
    if redis.call("srem", acks, id) == 0 then
        raced[#raced + 1] = position
    else
        local stored
        if payload == "" then
            stored = redis.call("hget", messages, id)
            payload = stored
        else
            stored = redis.call("hexists", messages, id) == 1
        end
        if not stored then
            missing[#missing + 1] = position
        else
            if action == "requeue" then
                if new_id ~= "" and new_id ~= id then
                    add(deletions, queue, id)
                    id = new_id
                end
                add(puts, queue, id, payload)
                add(pushes, queue, id)
            elseif action == "deadletter" then
                redis.call("zadd", KEYS[base + 4], now, id)
                redis.call("hset", KEYS[base + 5], id, payload)
                add(deletions, queue, id)
            else
                add(deletions, queue, id)
            end
        end
    end
end

local function each_chunk(list, size, call)
    for start = 1, #list, size do
        call(unpack(list, start, math.min(start + size - 1, #list)))
    end
end
for queue, ids in pairs(deletions) do
    each_chunk(ids, 1000, function(...) redis.call("hdel", KEYS[(queue - 1) * 5 + 3], ...) end)
end
for queue, fields in pairs(puts) do
    each_chunk(fields, 1000, function(...) redis.call("hset", KEYS[(queue - 1) * 5 + 3], ...) end)
end
for queue, ids in pairs(pushes) do
    each_chunk(ids, 1000, function(...) redis.call("lpush", KEYS[(queue - 1) * 5 + 2], ...) end)
end
return {raced, missing}
