-- repark_outbox: take over an orphan left in the outbox by a sweeper that
-- stopped between claiming it and re-enqueueing it.
--
-- KEYS[1] outbox  HASH  message id -> {"parked_at": server ms, "record": record, "worker": worker id} (JSON)
--
-- ARGV[1] message id
-- ARGV[2] the entry as the caller read it
--
-- Returns the new entry when the caller now owns it (it must re-enqueue
-- the record, then delete the entry), or false when another sweeper took
-- it over or finished it first.

local outbox = KEYS[1]

if redis.call("hget", outbox, ARGV[1]) ~= ARGV[2] then
    return false
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local entry = cjson.decode(ARGV[2])
entry["parked_at"] = now
local renewed = cjson.encode(entry)
redis.call("hset", outbox, ARGV[1], renewed)
return renewed
