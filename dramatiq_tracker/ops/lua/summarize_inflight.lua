-- summarize_inflight: count the in-flight records of some workers by queue and
-- by actor, on the server, so that a cluster's status never ships every record
-- to the client.  Read-only.
--
-- KEYS[1..n] inflight   HASH    a worker's message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[i] "1" when the worker of KEYS[i] is not alive (its records are orphans waiting), else "0"
--
-- Returns a JSON object: {"queues": {queue: [records, orphans, oldest started_at]},
-- "actors": {actor: records}, "corrupt": [[i, message id], ...]}, where a
-- corrupt record is one that is not a JSON array of at least 5 values beginning
-- with actor, queue and start time (i: the index of its key in KEYS).

-- include: _record_fields

local queues, actors, corrupt = {}, {}, {}

for i, inflight in ipairs(KEYS) do
    local orphaned = ARGV[i] == "1" and 1 or 0
    local records = redis.call("hgetall", inflight)
    for j = 1, #records, 2 do
        local message_id = records[j]
        if message_id ~= "__seq__" then
            local actor, queue, started_at = fields(records[j + 1])
            if actor then
                local counts = queues[queue]
                if not counts then
                    counts = {0, 0, started_at}
                    queues[queue] = counts
                end
                counts[1] = counts[1] + 1
                counts[2] = counts[2] + orphaned
                if started_at < counts[3] then
                    counts[3] = started_at
                end
                actors[actor] = (actors[actor] or 0) + 1
            else
                corrupt[#corrupt + 1] = {i, message_id}
            end
        end
    end
end

-- (An empty table encodes as {}, whether it stands for an object or an array.)
return cjson.encode({queues = queues, actors = actors, corrupt = corrupt})
