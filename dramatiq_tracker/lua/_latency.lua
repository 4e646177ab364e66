-- A fragment, included where a script says "-- include: _latency" (see script_source): the recovery
-- latency, counted in the HASH ``counters`` when a dead worker's orphan starts again: how long after its
-- worker's death (its presence lost, else its last heartbeat), in buckets by upper bound in ms
-- ("recovery_latency_le:<ms>", not cumulative; "recovery_latency_le:inf" past the last), with the sum
-- ("recovery_latency_sum_ms") and the count ("recovery_latency_count").  The operator tools read them as
-- a histogram (dramatiq_tracker.ops.views.LATENCY_BOUNDS lists the same bounds).
local LATENCY_BOUNDS = {250, 500, 1000, 2000, 3000, 5000, 10000, 20000, 30000, 60000, 120000}

local function count_latency(counters, latency)
    latency = math.max(0, math.floor(latency))
    local bucket = "inf"
    for _, bound in ipairs(LATENCY_BOUNDS) do
        if latency <= bound then
            bucket = tostring(bound)
            break
        end
    end
    redis.call("hincrby", counters, "recovery_latency_le:" .. bucket, 1)
    redis.call("hincrby", counters, "recovery_latency_sum_ms", latency)
    redis.call("hincrby", counters, "recovery_latency_count", 1)
end
