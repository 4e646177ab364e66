-- oldest_inflight: the longest-running in-flight records of some workers, found on
-- the server, so that "the oldest messages in flight" never ships every record to
-- the client.  Read-only.
--
-- KEYS[1..n] inflight   HASH    a worker's message id -> in-flight record; "__seq__" -> write count
--
-- ARGV[1] how many to return, at most
--
-- Returns a JSON array of [i, message id, started_at], oldest first (i: the index of
-- its worker's key in KEYS).  Records that are not a JSON array beginning with actor,
-- queue and start time are left out (``summarize_inflight`` reports them).

local wanted = tonumber(ARGV[1])
local oldest = {}
if wanted < 1 then
    return "[]"
end

for i, inflight in ipairs(KEYS) do
    local records = redis.call("hgetall", inflight)
    for j = 1, #records, 2 do
        local message_id = records[j]
        if message_id ~= "__seq__" then
            local ok, record = pcall(cjson.decode, records[j + 1])
            if ok and type(record) == "table" and type(record[3]) == "number" then
                local started_at = record[3]
                if #oldest < wanted or started_at < oldest[#oldest][3] then
                    -- Insert in order, dropping the newest when the list is full: wanted is small.
                    local position = #oldest + 1
                    while position > 1 and oldest[position - 1][3] > started_at do
                        position = position - 1
                    end
                    table.insert(oldest, position, {i, message_id, started_at})
                    if #oldest > wanted then
                        table.remove(oldest)
                    end
                end
            end
        end
    end
end

-- (An empty table encodes as {}: the caller reads it as no records.)
return cjson.encode(oldest)
