-- take_running: an attempt takes the place of a dead one in the running index.
--
-- KEYS[1] running  HASH  message id -> "worker id|token", all workers
--
-- ARGV[1] message id
-- ARGV[2] the dead attempt's "worker id|token"
-- ARGV[3] the new attempt's "worker id|token"
--
-- Returns 1 when taken, 0 when the index no longer names the dead attempt.

if redis.call("hget", KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call("hset", KEYS[1], ARGV[1], ARGV[3])
    return 1
end
return 0
