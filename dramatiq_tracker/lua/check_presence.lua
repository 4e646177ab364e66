-- check_presence: find the workers of one broker identity whose presence is
-- gone, and for how long.
--
-- KEYS[1] presence      HASH    worker id -> its last heartbeat (server ms), of the workers of this broker
--                               identity whose presence this server saw (see heartbeat)
-- KEYS[2] absent        HASH    worker id -> "since|beat": when a check first found its presence gone
--                               (server ms), and its last heartbeat then
-- KEYS[3] server        HASH    incarnation and since (see the fragment _server)
-- KEYS[4] heartbeat     STRING  the caller's heartbeat (optional: an operator's command has none)
--
-- ARGV[1] the channel prefix: a worker's presence channel is this prefix followed by its id
-- ARGV[2] "1" when presence channels are sharded (Redis Cluster)
-- ARGV[3] settle (ms): how long after the namespace first saw this server deaths may be judged
-- ARGV[4] the caller's worker id, or ""
--
-- A worker's absence is noted the first time its presence is found gone;
-- one seen present again, or one that heartbeat since (a worker whose
-- subscription drops heartbeats at once), starts over.  It is dead once it
-- has been absent, in every check, for presence_grace (the caller decides,
-- and declare_dead checks again).
--
-- Returns {"settling"} while this server is new to the namespace (a restart,
-- a failover: workers may not have reached it yet); {"unsure"} when the
-- caller's own presence or heartbeat is not on this server (it may talk to
-- another server than its workers do); else {"ok", worker id, absent for
-- (ms), worker id, absent for, ...} of the workers whose presence is gone
-- and whose heartbeat was not renewed since.  No absence is noted in the
-- first two cases.

-- include: _server

local presence, absent, server, heartbeat = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, count_command = ARGV[1], ARGV[2] == "1" and "shardnumsub" or "numsub"
local settle, caller = tonumber(ARGV[3]), ARGV[4]

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now - server_since(server, now) < settle then
    return {"settling"}
end

local entries = redis.call("hgetall", presence)
local ids, beats = {}, {}
for i = 1, #entries, 2 do
    ids[#ids + 1] = entries[i]
    beats[entries[i]] = entries[i + 1]
end
local counts = {}
for start = 1, #ids, 500 do
    local channels = {}
    for i = start, math.min(start + 499, #ids) do
        channels[#channels + 1] = prefix .. ids[i]
    end
    local reply = redis.call("pubsub", count_command, unpack(channels))
    for j = 2, #reply, 2 do
        counts[#counts + 1] = reply[j]
    end
end

if caller ~= "" then
    if not heartbeat or redis.call("exists", heartbeat) == 0 then
        return {"unsure"}
    end
    if beats[caller] and redis.call("pubsub", count_command, prefix .. caller)[2] == 0 then
        return {"unsure"}
    end
end

local noted = {}
local found = redis.call("hgetall", absent)
for i = 1, #found, 2 do
    noted[found[i]] = found[i + 1]
end
local absences, forget = {"ok"}, {}
for i, worker_id in ipairs(ids) do
    local record = noted[worker_id]
    noted[worker_id] = nil
    if counts[i] > 0 then
        if record then
            forget[#forget + 1] = worker_id
        end
    else
        local since, beat = nil, nil
        if record then
            since, beat = string.match(record, "^(%d+)|(.*)$")
        end
        local absent_for = 0
        if not since or beat ~= beats[worker_id] then
            redis.call("hset", absent, worker_id, now .. "|" .. beats[worker_id])
        else
            absent_for = now - tonumber(since)
        end
        absences[#absences + 1] = worker_id
        absences[#absences + 1] = absent_for
    end
end
-- Absences of workers no longer presence-checked (deregistered, declared dead, off).
for worker_id in pairs(noted) do
    forget[#forget + 1] = worker_id
end
for start = 1, #forget, 500 do
    redis.call("hdel", absent, unpack(forget, start, math.min(start + 499, #forget)))
end
return absences
