-- take_recovery: claim a dead worker's recovery outside a declaration of its death (orphans a
-- stopped sweeper left in the outbox after the worker was forgotten).
--
-- KEYS[1] recovery  HASH  see the fragment _recovery
--
-- ARGV[1] the sweeper's claim token
-- ARGV[2] the sweeper's worker id, or ""
-- ARGV[3] takeover_after (ms)
-- ARGV[4] history_ttl (ms)
--
-- Returns 1 when the caller now holds the claim, or 0 when another sweeper renewed it within
-- takeover_after.

-- include: _recovery

local recovery = KEYS[1]

local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if claimed_by_another(recovery, ARGV[1], now, tonumber(ARGV[3])) then
    return 0
end
take_claim(recovery, ARGV[1], ARGV[2], now, ARGV[4])
return 1
