-- count_presence: how many subscribers workers' presence channels have, on the
-- server (on a Redis Cluster, the node of the namespace's slot) that holds them.
--
-- KEYS[1] server        HASH    the namespace's server incarnation: only routes the call to the namespace's node
--
-- ARGV[1] "1" when presence channels are sharded (Redis Cluster)
-- ARGV[2..] the channels
--
-- Returns one count per channel, in order.

local command = ARGV[1] == "1" and "shardnumsub" or "numsub"
local counts = {}
for start = 2, #ARGV, 500 do
    local reply = redis.call("pubsub", command, unpack(ARGV, start, math.min(start + 499, #ARGV)))
    for i = 2, #reply, 2 do
        counts[#counts + 1] = reply[i]
    end
end
return counts
