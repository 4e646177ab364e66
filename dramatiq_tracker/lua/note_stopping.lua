-- note_stopping: a worker began a graceful shutdown: its registration says since when, so that
-- operators see it stopping rather than alive.
--
-- KEYS[1] workers  HASH  worker id -> registration (JSON)
--
-- ARGV[1] worker id
-- ARGV[2] its registration, with "stopping_at" (JSON)
--
-- Only a registered worker is updated (one declared dead and forgotten meanwhile is not brought
-- back).  Returns 1, or 0 when it was not registered.

if redis.call("hexists", KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
return 1
