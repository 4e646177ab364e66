-- adopt_worker: register, as due for recovery, a worker process that the
-- tracker's Redis forgot (it restarted empty, failed over, or evicted it)
-- but that its broker still remembers, dead.
--
-- KEYS[1] workers       HASH    worker id -> registration (JSON)
-- KEYS[2] identities    HASH    broker identity digest -> broker identity
-- KEYS[3] deadlines     ZSET    worker id -> heartbeat deadline (server ms), of its broker identity
-- KEYS[4] dead_workers  ZSET    worker id -> when it was declared dead
-- KEYS[5] host          SET     worker ids registered from its host
-- KEYS[6] broker        SET     worker ids sharing its broker_id
--
-- ARGV[1] worker id
-- ARGV[2] registration (JSON)
-- ARGV[3] broker identity digest
-- ARGV[4] broker identity
-- ARGV[5] "1" to adopt a worker declared dead before: it resumed after its
--         declaration, fetched again, and died before it registered anew
--
-- Writes nothing when the worker is registered, or was declared dead (its
-- recovery is done or under way) unless ARGV[5] says so.  The adopted worker
-- has no heartbeat and no records: the next sweep declares it dead and
-- recovers what its broker holds for it.  Returns 1 when adopted, else 0.

local workers, identities, deadlines, dead_workers, host, broker = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local worker_id = ARGV[1]
if redis.call("hexists", workers, worker_id) == 1 then
    return 0
end
if ARGV[5] ~= "1" and redis.call("zscore", dead_workers, worker_id) then
    return 0
end
redis.call("hset", workers, worker_id, ARGV[2])
redis.call("hset", identities, ARGV[3], ARGV[4])
redis.call("zadd", deadlines, 0, worker_id)
redis.call("sadd", host, worker_id)
redis.call("sadd", broker, worker_id)
return 1
