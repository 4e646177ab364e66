-- count_events: count a batch of stream events by kind, in time buckets, on the
-- server, newest first, so that a chart of the last hour never ships the events
-- to the client.  Read-only.
--
-- KEYS[1] events  STREAM  tracker events (ids: server ms when written)
--
-- ARGV[1] the newest entry to read: "+", or "(<id>" to go on below an entry
-- ARGV[2] the oldest entry to read: the window's start, in ms
-- ARGV[3] how many entries to read at most (a batch: the script blocks Redis
--         about 1 ms per 1,000 entries)
-- ARGV[4] the start of the first bucket (ms), ARGV[5] the bucket width (ms),
-- ARGV[6] how many buckets
-- ARGV[7..] the kinds to count
--
-- Returns {entries read, id of the oldest entry read or "", counts...}, where the
-- counts of the i-th kind (from 0) are at i * buckets + 1 .. (i + 1) * buckets,
-- oldest bucket first; an event outside the buckets counts in the nearest one.

local events = KEYS[1]

local newest, oldest, count = ARGV[1], ARGV[2], ARGV[3]
local start, step, buckets = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local offsets, counts = {}, {}
for i = 7, #ARGV do
    offsets[ARGV[i]] = (i - 7) * buckets
end
for i = 1, (#ARGV - 6) * buckets do
    counts[i] = 0
end

local entries = redis.call("xrevrange", events, newest, oldest, "COUNT", count)
for _, entry in ipairs(entries) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
        if fields[j] == "kind" then
            local offset = offsets[fields[j + 1]]
            local at = tonumber(string.match(entry[1], "^(%d+)"))
            if offset ~= nil and at ~= nil then
                local bucket = math.floor((at - start) / step)
                if bucket < 0 then
                    bucket = 0
                elseif bucket >= buckets then
                    bucket = buckets - 1
                end
                counts[offset + bucket + 1] = counts[offset + bucket + 1] + 1
            end
            break
        end
    end
end

local last = ""
if #entries > 0 then
    last = entries[#entries][1]
end
local reply = {#entries, last}
for i = 1, #counts do
    reply[#reply + 1] = counts[i]
end
return reply
