-- release_lock: delete a uniqueness lock, only if the caller's attempt owns it.
--
-- KEYS[1] lock   HASH  message_id, attempt, ...
-- KEYS[2] locks  ZSET  digest -> expiry
--
-- ARGV[1] digest
-- ARGV[2] message id
-- ARGV[3] attempt
--
-- A late completion of an attempt that was recovered (a zombie) carries an
-- older attempt than the lock, and releases nothing.
--
-- Returns 1 when released, 0 when the lock is gone or owned by someone else.

if redis.call("hget", KEYS[1], "message_id") == ARGV[2] and redis.call("hget", KEYS[1], "attempt") == ARGV[3] then
    redis.call("del", KEYS[1])
    redis.call("zrem", KEYS[2], ARGV[1])
    return 1
end
return 0
