-- worker_states: what the inspector needs to judge some workers, read on the
-- server and returned as one JSON string, so that a cluster's status does not
-- parse five replies per worker.  Read-only.
--
-- KEYS[1]       dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[3i-1]    heartbeat     STRING  worker i's heartbeat (its value: the server ms of the beat)
-- KEYS[3i]      deadlines     ZSET    worker id -> heartbeat deadline, of worker i's broker identity
-- KEYS[3i+1]    inflight      HASH    worker i's message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[i] worker i's id
--
-- Returns a JSON array with, per worker, [last beat, declared dead at, deadline,
-- records]: server ms, -1 where there is none, and its in-flight records (the
-- write count left out).  A value that is not a finite number counts as none, but
-- for a heartbeat, which is there: 0.

local dead_workers = KEYS[1]
local states = {}

local function number(value, unreadable)
    if not value then
        return -1
    end
    local found = tonumber(value)
    if found == nil or found ~= found or found == math.huge or found == -math.huge then
        return unreadable
    end
    return found
end

for i, worker_id in ipairs(ARGV) do
    local heartbeat, deadlines, inflight = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
    local records = redis.call("hlen", inflight) - redis.call("hexists", inflight, "__seq__")
    states[i] = {
        number(redis.call("get", heartbeat), 0),
        number(redis.call("zscore", dead_workers, worker_id), -1),
        number(redis.call("zscore", deadlines, worker_id), -1),
        math.max(0, records),
    }
end

-- (An empty table encodes as {}: the caller asks for one worker at least.)
return cjson.encode(states)
