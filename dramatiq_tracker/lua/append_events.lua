-- append_events: append events to the capped stream and count them, in one step.
--
-- KEYS[1] events    STREAM  tracker events (capped: MAXLEN ~)
-- KEYS[2] counters  HASH    event kind -> how many times it happened
--
-- ARGV[1] the approximate length the stream is capped at
-- ARGV[2] a JSON object: counter name -> increment
-- ARGV[3] a JSON array of events, each a flat array of its fields and values
--
-- Returns the number of events appended.

local events, counters = KEYS[1], KEYS[2]

local maxlen = ARGV[1]
for name, increment in pairs(cjson.decode(ARGV[2])) do
    redis.call("hincrby", counters, name, increment)
end
local appended = cjson.decode(ARGV[3])
for _, fields in ipairs(appended) do
    redis.call("xadd", events, "MAXLEN", "~", maxlen, "*", unpack(fields))
end
return #appended
