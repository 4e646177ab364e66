-- repark_outbox: the holder of a dead worker's recovery claim takes one of the worker's orphans
-- parked in the outbox, right before it enqueues it again: its own, or one a sweeper it took the
-- claim over from parked.
--
-- KEYS[1] outbox    HASH  message id -> {"parked_at": server ms, "record": record, "worker": worker id,
--                         "token": the claim token it was parked under} (JSON), of a broker identity
-- KEYS[2] recovery  HASH  the dead worker's recovery claim (see the fragment _recovery)
--
-- ARGV[1] message id
-- ARGV[2] the caller's claim token
--
-- Returns "fenced" when the caller does not hold the claim (it must stop), "gone" when the entry is
-- not there any more (it was enqueued: nothing to do), else the entry, parked under the caller's
-- token: the caller enqueues the record, then deletes the entry.  The claim counts as renewed.

local outbox, recovery = KEYS[1], KEYS[2]

if redis.call("hget", recovery, "token") ~= ARGV[2] then
    return "fenced"
end
local raw = redis.call("hget", outbox, ARGV[1])
if not raw then
    return "gone"
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("hset", recovery, "renewed", now)
local entry = cjson.decode(raw)
if entry["token"] == ARGV[2] then
    return raw
end
entry["token"] = ARGV[2]
entry["parked_at"] = now
local renewed = cjson.encode(entry)
redis.call("hset", outbox, ARGV[1], renewed)
return renewed
