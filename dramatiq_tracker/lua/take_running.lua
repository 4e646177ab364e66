-- take_running: an attempt takes the place of an ended or dead one in the running index.
--
-- KEYS[1] running  HASH  message id -> "worker id|token|retries", all workers
--
-- ARGV[1] message id
-- ARGV[2] the previous attempt's "worker id|token|retries"
-- ARGV[3] the new attempt's "worker id|token|retries"
--
-- Returns 1 when taken, 0 when the index no longer names the previous attempt.

local running = KEYS[1]

if redis.call("hget", running, ARGV[1]) == ARGV[2] then
    redis.call("hset", running, ARGV[1], ARGV[3])
    return 1
end
return 0
