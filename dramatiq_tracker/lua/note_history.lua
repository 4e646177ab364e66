-- note_history: set fields of a message's history and keep it history_ttl.
--
-- KEYS[1] history  HASH  the message's history
--
-- ARGV[1] history_ttl (ms)
-- ARGV[2] a field to delete first, or ""
-- ARGV[3..] field, value pairs to set
--
-- Used to remember a cancel or abort request longer than dramatiq-abort
-- does (field abort), and to note that a duplicate was put off behind an
-- attempt (field deferred_behind, clearing completed_by).  Returns 1.

local history = KEYS[1]

if ARGV[2] ~= "" then
    redis.call("hdel", history, ARGV[2])
end
for i = 3, #ARGV, 2 do
    redis.call("hset", history, ARGV[i], ARGV[i + 1])
end
redis.call("pexpire", history, ARGV[1])
return 1
