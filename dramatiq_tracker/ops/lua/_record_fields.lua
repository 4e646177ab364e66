-- A fragment, included where a script says "-- include: _record_fields" (see script_source): the
-- actor, queue and start time of an in-flight record, read on the server.

-- The start of a record as the tracker writes it, without escapes: actor, queue, start time, token,
-- max_recoveries.  Matching it costs a third of decoding the record; anything else (an escaped name,
-- another writer) is decoded.
local PLAIN = '^%["([^"\\]*)","([^"\\]*)",(%d+),"[^"\\]*",%d'

-- The actor, queue and start time of a record; nil when it is not a JSON array of at least 5 values
-- beginning with them (a corrupt record).
local function fields(raw)
    local actor, queue, started_at = string.match(raw, PLAIN)
    if actor then
        return actor, queue, tonumber(started_at)
    end
    local ok, record = pcall(cjson.decode, raw)
    if ok and type(record) == "table" and #record >= 5 and type(record[1]) == "string"
        and type(record[2]) == "string" and type(record[3]) == "number" then
        return record[1], record[2], record[3]
    end
    return nil
end
