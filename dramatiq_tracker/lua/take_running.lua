-- take_running: an attempt takes the place of an ended or dead one in the running index.
--
-- KEYS[1] running  HASH  message id -> "worker id|token|retries", all workers
--
-- ARGV[1] message id
-- ARGV[2] the previous attempt's "worker id|token|retries"
-- ARGV[3] the new attempt's "worker id|token|retries"
--
-- The place is also taken when the index names no attempt: the claim of a dead
-- worker's orphan removes its entry before the attempt that claimed it takes
-- the place, and a running attempt the index does not name would not be waited
-- for by a duplicate delivery.  An attempt of another worker named meanwhile
-- keeps the place.
--
-- Returns 1 when taken, 0 when the index names another attempt.

local running = KEYS[1]

local current = redis.call("hget", running, ARGV[1])
if not current or current == ARGV[2] then
    redis.call("hset", running, ARGV[1], ARGV[3])
    return 1
end
return 0
