-- find_message: look for a message among a RedisBroker queue's payloads, a batch at a time.
-- Read-only; it touches the broker's keys, not the tracker's.  Dramatiq keys a queue's
-- payloads by a redis message id of its own, not the message id: this looks for the message id
-- inside the payloads, on the server, so that no payload crosses the network.
--
-- KEYS[1] messages  HASH  a queue's redis message id -> encoded message (<namespace>:<queue>.msgs)
--
-- ARGV[1] the HSCAN cursor to go on from ("0" to begin)
-- ARGV[2] how many entries to read (an HSCAN COUNT)
-- ARGV[3] the message id to look for
--
-- Returns {next cursor ("0" at the end), 1 if a payload holds the message id, else 0}.

local found = redis.call("hscan", KEYS[1], ARGV[1], "COUNT", tonumber(ARGV[2]))
local entries = found[2]
for i = 2, #entries, 2 do
    if string.find(entries[i], ARGV[3], 1, true) then
        return {found[1], 1}
    end
end
return {found[1], 0}
