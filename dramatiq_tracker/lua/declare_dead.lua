-- declare_dead: confirm that a worker is dead and fence it, atomically.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of the caller's broker identity
-- KEYS[3] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[4] heartbeat     STRING  the worker's heartbeat
-- KEYS[5] inflight      HASH    the worker's message id -> in-flight record; "__seq__" -> write count
-- KEYS[6] presence      HASH    worker id -> its last heartbeat, of the workers whose presence this server
--                               saw (see heartbeat), of the caller's broker identity
-- KEYS[7] absent        HASH    worker id -> "since|beat" (see check_presence)
-- KEYS[8] server        HASH    incarnation and since (see the fragment _server)
-- KEYS[9] recovery      HASH    the worker's recovery claim (see the fragment _recovery)
-- KEYS[10] caller       STRING  the caller's own heartbeat (optional: an operator's command has none)
--
-- ARGV[1] worker id
-- ARGV[2] why it would be dead: "process" (the caller saw its process gone
--         on this host: its heartbeat may still be fresh), "presence" (its
--         presence has been gone for presence_grace, see check_presence), or
--         "heartbeat" (its heartbeat expired)
-- ARGV[3] retry_after (ms): when to look at this worker again should the
--         recovery that follows be interrupted
-- ARGV[4] "1" for a dry run: tell, change nothing
-- ARGV[5] settle (ms): how long after the namespace first saw this server a
--         death may be judged by presence or heartbeat
-- ARGV[6] presence_grace (ms)
-- ARGV[7] the worker's presence channel
-- ARGV[8] "1" when presence channels are sharded (Redis Cluster)
-- ARGV[9] a claim token: the caller recovers the worker if it is dead, and claims its recovery
--         (see the fragment _recovery); "" to only declare it dead (a start that takes one orphan)
-- ARGV[10] the caller's worker id, or ""
-- ARGV[11] history_ttl (ms): how long the claim is kept
-- ARGV[12] heartbeat_timeout (ms): the worker's last heartbeat was this long before its deadline
--
-- Returns {"gone"} when the worker is not registered (its deadline entry is
-- removed, so that it never blocks the others); {"unsure"} when this server
-- is new to the namespace (a restart, a failover: workers may not have
-- reached it yet) or the caller's own heartbeat is not on it, for a death
-- judged by presence or heartbeat; {"alive"} when the reason does not hold
-- (its heartbeat is fresh, or its presence is back or was not gone long
-- enough, or it heartbeat since), never for a worker declared dead already
-- (it stays dead); else {"dead", registration, dead since, why,
-- message id, record, message id, record, ...}, the claim taken: dead since
-- is when the worker died as far as the server can tell (its presence lost,
-- else its last heartbeat; server ms), and why the reason its first
-- declaration gave (a start at a RabbitMQ redelivery may declare it, and a
-- sweep recover it), both noted in the recovery HASH at that declaration; {"claimed"} when it is dead
-- but another sweeper holds the claim on its recovery, renewed within
-- retry_after (that sweeper is recovering it).  A dead worker's heartbeat is deleted
-- and its id is tombstoned, so that should it be alive after all, its next
-- heartbeat tells it so.

-- include: _server
-- include: _recovery

local workers, deadlines, dead_workers, heartbeat, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local presence, absent, server, recovery, caller = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]

local worker_id, reason = ARGV[1], ARGV[2]
local dry_run = ARGV[4] == "1"
local registration = redis.call("hget", workers, worker_id)
if not registration then
    if not dry_run then
        redis.call("zrem", deadlines, worker_id)
        redis.call("hdel", presence, worker_id)
        redis.call("hdel", absent, worker_id)
    end
    return {"gone"}
end
local time = redis.call("time")
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Declared dead already (by another thread or sweeper, a moment ago): its presence and heartbeat are
-- gone with that declaration, so they cannot be judged again; it stays dead (a zombie goes on under a
-- new id).
local declared = redis.call("zscore", dead_workers, worker_id)

if reason ~= "process" and not declared then
    if now - server_since(server, now) < tonumber(ARGV[5]) then
        return {"unsure"}
    end
    if caller and redis.call("exists", caller) == 0 then
        return {"unsure"}
    end
end

if declared then
    -- Dead, as judged before: what follows reads and claims.
elseif reason == "heartbeat" then
    local remaining = redis.call("pttl", heartbeat)
    if remaining > 0 then
        -- Alive: its deadline follows its heartbeat, should the two have drifted apart.
        if not dry_run then
            redis.call("zadd", deadlines, now + remaining, worker_id)
        end
        return {"alive"}
    end
elseif reason == "presence" then
    local beat = redis.call("hget", presence, worker_id)
    local since, seen_beat = string.match(redis.call("hget", absent, worker_id) or "", "^(%d+)|(.*)$")
    local count = redis.call("pubsub", ARGV[8] == "1" and "shardnumsub" or "numsub", ARGV[7])[2]
    if count > 0 or not beat or not since or seen_beat ~= beat or now - tonumber(since) < tonumber(ARGV[6]) then
        return {"alive"}
    end
end

-- When it died, as far as this server can tell: kept from its first declaration.
local dead_since = redis.call("hget", recovery, "dead_since")
if not dead_since then
    local since = string.match(redis.call("hget", absent, worker_id) or "", "^(%d+)|")
    local beat = redis.call("hget", presence, worker_id)
    local deadline = redis.call("zscore", deadlines, worker_id)
    if reason == "presence" and since then
        dead_since = since
    elseif beat then
        dead_since = beat
    elseif deadline and not declared then
        dead_since = tostring(math.min(now, tonumber(deadline) - (tonumber(ARGV[12]) or 0)))
    else
        dead_since = tostring(now)
    end
    if not dry_run then
        redis.call("hset", recovery, "dead_since", dead_since, "why", reason)
        redis.call("pexpire", recovery, ARGV[11])
    end
end
local why = redis.call("hget", recovery, "why") or reason

local token = ARGV[9]
if not dry_run and token ~= "" then
    if claimed_by_another(recovery, token, now, tonumber(ARGV[3])) then
        return {"claimed"}
    end
    take_claim(recovery, token, ARGV[10], now, ARGV[11])
end

if not dry_run then
    redis.call("del", heartbeat)
    redis.call("hdel", presence, worker_id)
    redis.call("hdel", absent, worker_id)
    redis.call("zadd", dead_workers, "nx", now, worker_id)
    redis.call("zadd", deadlines, now + tonumber(ARGV[3]), worker_id)
end

local result = {"dead", registration, dead_since, why}
local records = redis.call("hgetall", inflight)
for i = 1, #records, 2 do
    if records[i] ~= "__seq__" then
        result[#result + 1] = records[i]
        result[#result + 1] = records[i + 1]
    end
end
return result
