-- server_time: the clock of the Redis server that holds a namespace.
--
-- KEYS[1] any key of the namespace (it routes the call to the namespace's node on a Cluster)
--
-- Returns {seconds, microseconds}, as TIME does.

local _ = KEYS[1]
return redis.call("time")
