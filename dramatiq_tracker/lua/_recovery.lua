-- A fragment, included where a script says "-- include: _recovery" (see script_source): the claim a
-- sweeper holds on one dead worker's recovery, the HASH ``recovery`` (token, renewed: server ms,
-- holder: the sweeper's worker id or "", and one field "<message id>|<cleaner>" per lock cleaner call
-- begun).  A sweeper renews it before every step; another may take it over only once it went
-- takeover_after without renewal, and the one it was taken from then does nothing more under it.

-- Whether another sweeper holds the claim and renewed it within takeover_after (ms).
local function claimed_by_another(recovery, token, now, takeover_after)
    local held = redis.call("hmget", recovery, "token", "renewed")
    return held[1] and held[1] ~= token and now - (tonumber(held[2]) or 0) < takeover_after
end

-- Take the claim (or renew it) for token; its marks stay, so that no lock cleaner runs twice.
local function take_claim(recovery, token, holder, now, ttl)
    redis.call("hset", recovery, "token", token, "renewed", now, "holder", holder)
    redis.call("pexpire", recovery, ttl)
end
