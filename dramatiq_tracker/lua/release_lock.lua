-- release_lock: delete a uniqueness lock, only if the caller's attempt may.
--
-- KEYS[1] lock          HASH  message_id, attempt, ...
-- KEYS[2] locks         ZSET  digest -> expiry
-- KEYS[3] dead_workers  ZSET  worker id -> when it was declared dead
--
-- ARGV[1] digest
-- ARGV[2] message id
-- ARGV[3] attempt
-- ARGV[4] the releasing worker's id ("" for none)
--
-- The owning message's attempt releases its lock.  An older attempt of the
-- same message releases it too (a copy that Dramatiq's own maintenance
-- delivered without the tracker's marks), unless its worker was declared
-- dead: that one is a zombie whose late completion must not release the
-- lock of the attempt that replaced it.
--
-- Returns 1 when released, 0 when the lock is gone or not the caller's.

local lock, locks, dead_workers = KEYS[1], KEYS[2], KEYS[3]

if redis.call("hget", lock, "message_id") ~= ARGV[2] then
    return 0
end
local held_by = tonumber(redis.call("hget", lock, "attempt") or "0") or 0
local attempt = tonumber(ARGV[3]) or 0
if attempt > held_by then
    return 0
end
if attempt < held_by and (ARGV[4] == "" or redis.call("zscore", dead_workers, ARGV[4])) then
    return 0
end
redis.call("del", lock)
redis.call("zrem", locks, ARGV[1])
return 1
