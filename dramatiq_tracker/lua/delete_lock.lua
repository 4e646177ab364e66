-- delete_lock: an operator removes a uniqueness lock, whoever owns it.
--
-- KEYS[1] lock   HASH  message_id, attempt, ...
-- KEYS[2] locks  ZSET  digest -> expiry
--
-- ARGV[1] digest
--
-- Returns 1 when a lock was deleted, else 0.

local lock, locks = KEYS[1], KEYS[2]

redis.call("zrem", locks, ARGV[1])
return redis.call("del", lock)
