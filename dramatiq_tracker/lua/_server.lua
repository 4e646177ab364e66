-- A fragment, included where a script says "-- include: _server" (see script_source): the server's
-- incarnation.  A restart changes its run id, a promotion its replication id; the namespace notes,
-- in the HASH ``server`` (incarnation, since), when it first saw this one, and no death is judged by
-- presence or heartbeat until its workers have had time to reach it.  Without INFO (a Redis user
-- denied it), only a restart that lost the namespace's keys is seen.  Returns that time (server ms).
local function server_since(server, now)
    local about, replication = redis.pcall("info", "server"), redis.pcall("info", "replication")
    local incarnation = ""
    if type(about) == "string" and type(replication) == "string" then
        incarnation = (string.match(about, "run_id:(%w+)") or "") .. ":"
            .. (string.match(replication, "master_replid:(%w+)") or "")
    end
    if redis.call("hget", server, "incarnation") ~= incarnation then
        redis.call("hset", server, "incarnation", incarnation, "since", now)
        return now
    end
    return tonumber(redis.call("hget", server, "since")) or now
end
