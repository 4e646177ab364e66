-- worker_states: what the inspector needs to judge some workers, read on the
-- server and returned as one JSON string, so that a cluster's status does not
-- parse many replies per worker.  Read-only.
--
-- KEYS[1]       dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[5i-3]    heartbeat     STRING  worker i's heartbeat (its value: the server ms of the beat)
-- KEYS[5i-2]    deadlines     ZSET    worker id -> heartbeat deadline, of worker i's broker identity
-- KEYS[5i-1]    inflight      HASH    worker i's message id -> in-flight record; "__seq__" -> write count
-- KEYS[5i]      present       HASH    worker id -> last heartbeat, of the workers of worker i's broker
--                                     identity whose presence the server saw
-- KEYS[5i+1]    absent        HASH    worker id -> "since_ms|beat", of the same broker identity: when a
--                                     sweeper first found its presence gone
--
-- ARGV[1] "1" when presence channels are sharded (a Redis Cluster: SHARDNUMSUB), else "0"
-- ARGV[2] the channel prefix: a worker's presence channel is this prefix followed by its id
-- ARGV[2+i] worker i's id
--
-- Returns a JSON array with, per worker, [last beat, declared dead at, deadline,
-- records, presence, absent since]: server ms, -1 where there is none; its
-- in-flight records (the write count left out); presence -1 when the worker is
-- not listed as present (judged by its heartbeat only), else how many
-- connections subscribe to its channel (0: its presence is gone).  A value
-- that is not a finite number counts as none, but for a heartbeat, which is
-- there: -2 (unreadable).

local dead_workers = KEYS[1]
local sharded, prefix = ARGV[1] == "1", ARGV[2]
local states = {}
local listed, channels = {}, {}

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

for i = 3, #ARGV do
    local worker = i - 2
    local worker_id = ARGV[i]
    local base = 5 * worker - 3
    local heartbeat, deadlines, inflight, present, absent = KEYS[base], KEYS[base + 1], KEYS[base + 2],
        KEYS[base + 3], KEYS[base + 4]
    local records = redis.call("hlen", inflight) - redis.call("hexists", inflight, "__seq__")
    local absent_since = -1
    local absence = redis.call("hget", absent, worker_id)
    if absence then
        absent_since = number(string.match(absence, "^([^|]*)"), -1)
    end
    states[worker] = {
        number(redis.call("get", heartbeat), -2),
        number(redis.call("zscore", dead_workers, worker_id), -1),
        number(redis.call("zscore", deadlines, worker_id), -1),
        math.max(0, records),
        -1,
        absent_since,
    }
    if redis.call("hexists", present, worker_id) == 1 then
        listed[#listed + 1] = worker
        channels[#channels + 1] = prefix .. worker_id
    end
end

-- One command for every listed worker's channel: [channel, count, channel, count, ...].
if #channels > 0 then
    local counts = redis.call("pubsub", sharded and "shardnumsub" or "numsub", unpack(channels))
    for j, worker in ipairs(listed) do
        states[worker][5] = tonumber(counts[2 * j]) or 0
    end
end

-- (An empty table encodes as {}: the caller asks for one worker at least.)
return cjson.encode(states)
