-- scan_inflight: one HSCAN step over a worker's in-flight records, filtered on the
-- server by actor, queue and start time, so that a filter few records match does
-- not ship every record to the client.  Read-only.
--
-- KEYS[1] inflight  HASH  message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[1] the HSCAN cursor
-- ARGV[2] the HSCAN COUNT
-- ARGV[3] the actor to match, or ""
-- ARGV[4] the queue to match, or ""
-- ARGV[5] match only records started before this time (ms), or ""
--
-- Returns {next cursor, message id, record, message id, record, ...}: the records
-- that match, and those it cannot read (the caller reports them as problems).

-- include: _record_fields

local inflight = KEYS[1]

local cursor, count = ARGV[1], ARGV[2]
local actor, queue, before = ARGV[3], ARGV[4], tonumber(ARGV[5])

local reply = redis.call("hscan", inflight, cursor, "COUNT", count)
local found = {reply[1]}
local records = reply[2]
for j = 1, #records, 2 do
    local message_id, raw = records[j], records[j + 1]
    if message_id ~= "__seq__" then
        local record_actor, record_queue, started_at = fields(raw)
        if record_actor == nil or ((actor == "" or record_actor == actor) and (queue == "" or record_queue == queue)
            and (before == nil or started_at < before)) then
            found[#found + 1] = message_id
            found[#found + 1] = raw
        end
    end
end
return found
