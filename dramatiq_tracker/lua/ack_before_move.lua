-- ack_before_move: ack a zombie's completed copy, saying whether the ack came
-- before the move of the recovery that superseded it.  Runs on the broker's
-- Redis, on Dramatiq's keys (dramatiq/brokers/redis/dispatch.lua, "ack").
--
-- KEYS[1] acks      SET   $namespace:__acks__.$broker_id.$queue, the process's un-acked ids
-- KEYS[2] messages  HASH  $namespace:$queue.msgs, redis message id -> payload
--
-- ARGV[1] the copy's redis message id
--
-- Acks as Dramatiq does.  Returns 1 when this call removed the id from the
-- acks set: the recovery's move (requeue_orphans, which removes it too) has
-- not happened and never will, so no recovered copy of the message exists.
-- Returns 0 when the move took it first.

if redis.call("srem", KEYS[1], ARGV[1]) > 0 then
    redis.call("hdel", KEYS[2], ARGV[1])
    return 1
end
return 0
