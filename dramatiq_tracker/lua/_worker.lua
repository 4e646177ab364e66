-- A fragment, included where a script says "-- include: _worker" (see script_source): what the scripts
-- that register, beat for, flush, deregister and forget a worker do alike with its keys.  ``prefix`` is
-- "<worker id>|", which starts the attempts of the worker that the ``running`` index names.

-- Note whether the worker's presence channel has a subscriber on this server (``sharded``: a Redis
-- Cluster's shard channel): "seen", noted in the HASH ``presence`` with ``now``; "unseen" when it
-- claims a channel and this server has none; "" when it claims none.  Only a seen worker stays there.
local function note_presence(presence, worker_id, channel, sharded, now)
    local seen = ""
    if channel ~= "" then
        if redis.call("pubsub", sharded and "shardnumsub" or "numsub", channel)[2] > 0 then
            seen = "seen"
            redis.call("hset", presence, worker_id, now)
        else
            seen = "unseen"
        end
    end
    if seen ~= "seen" then
        redis.call("hdel", presence, worker_id)
    end
    return seen
end

-- Write the record of a message the worker started; the ``running`` index names its attempt unless it
-- names another worker's, which keeps its place (this one may be a redelivery put off behind it).
local function record_start(inflight, running, prefix, message_id, token, record)
    redis.call("hset", inflight, message_id, record)
    local owner = redis.call("hget", running, message_id)
    if not owner or string.sub(owner, 1, #prefix) == prefix then
        redis.call("hset", running, message_id, prefix .. token)
    end
end

-- Take the messages of the worker's records out of the ``running`` index where it names the worker's
-- own attempts.
local function forget_running(inflight, running, prefix)
    for _, message_id in ipairs(redis.call("hkeys", inflight)) do
        local owner = redis.call("hget", running, message_id)
        if owner and string.sub(owner, 1, #prefix) == prefix then
            redis.call("hdel", running, message_id)
        end
    end
end

-- Take the worker out of the registry, its identity's deadlines, and the sets of its host and broker.
local function unregister(workers, deadlines, host, broker, worker_id)
    redis.call("hdel", workers, worker_id)
    redis.call("zrem", deadlines, worker_id)
    redis.call("srem", host, worker_id)
    if broker then
        redis.call("srem", broker, worker_id)
    end
end
