-- acquire_lease: take or renew the sweep lease of one broker identity, held by an owner.
--
-- KEYS[1] lease    STRING  "<owner token>|<owner's worker id>"
-- KEYS[2] present  HASH    worker id -> its last heartbeat, of the workers whose presence this server
--                          saw (see heartbeat), of the lease's broker identity
--
-- ARGV[1] owner: "<token>|<worker id>"
-- ARGV[2] duration (ms)
-- ARGV[3] the presence channels' prefix, or "" when presence is off
-- ARGV[4] "1" when presence channels are sharded (Redis Cluster)
--
-- Returns 1 when the caller holds the lease for the next ARGV[2] ms (taken,
-- renewed, or taken over), else 0.  The lease is taken over from a holder
-- whose presence this server saw and whose channel has no subscriber now:
-- its process is gone (or reconnecting), and left alone it would keep the
-- lease, and with it every judgment of presence, until the lease expires.
-- Taking it from a live holder costs nothing but a renewal it loses: deaths
-- are decided by declare_dead, not by the lease.

local lease, present = KEYS[1], KEYS[2]
local owner = ARGV[1]

local holder = redis.call("get", lease)
if holder == owner then
    redis.call("pexpire", lease, ARGV[2])
    return 1
end
if holder then
    local holder_id = string.match(holder, "|(.+)$")
    if ARGV[3] == "" or not holder_id or redis.call("hexists", present, holder_id) == 0 then
        return 0
    end
    local count = redis.call("pubsub", ARGV[4] == "1" and "shardnumsub" or "numsub", ARGV[3] .. holder_id)[2]
    if count > 0 then
        return 0
    end
end
redis.call("set", lease, owner, "px", ARGV[2])
return 1
