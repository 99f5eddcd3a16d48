-- Commits a turn: the reply record (at most one per message id), both history entries (appended,
-- capped, TTL refreshed), the session, the ordering watermark, the lease release and the wake-up
-- of the replica holding the web-chat request, and, when nothing is left to do after it, the
-- acknowledgement of the message's inbox entry. One step, so no reader ever sees half a turn and
-- no entry outlives its answer.
-- KEYS[1] oc:replied:{id}   KEYS[2] oc:conv:{conv}   KEYS[3] oc:session:{conv}   KEYS[4] oc:lease:{conv}
-- ARGV[1] reply JSON   ARGV[2] reply ttl (s)   ARGV[3] user entry JSON   ARGV[4] assistant entry JSON
-- ARGV[5] history limit   ARGV[6] conversation ttl (s)   ARGV[7] seq   ARGV[8] holder token
-- ARGV[9] pub/sub channel ('' = none)   ARGV[10] pub/sub payload
-- ARGV[11] '1' to release the lease ('0' keeps it until the reply is sent on its platform)
-- ARGV[12] later messages answered by this turn, as JSON: [{seq, entry, reply, channel, payload}]
--          with their reply keys in KEYS[9..] and KEYS[5] = oc:pending:{conv}
-- KEYS[6] oc:escalation:{conv}   KEYS[7] oc:escalations
-- ARGV[13] the escalation this turn starts, as a JSON object of string fields ('' = none)
-- ARGV[14] escalation retention (s): a conversation with a pending escalation lives this long
-- KEYS[8] oc:events:{conv}   ARGV[15] the session's events of this turn ('' = none)
-- ARGV[16] events max length   ARGV[17] events channel   ARGV[18] conversation
-- ARGV[19] the inbox entry to acknowledge and delete ('' = none), in stream KEYS[#KEYS]
-- ARGV[20] the inbox's consumer group   ARGV[21] the message's id
-- ARGV[22..] session field, value, ...
-- Returns {1} when committed, {0, existing reply JSON} when another turn committed first.
local function release()
  if redis.call('GET', KEYS[4]) == ARGV[8] then
    redis.call('DEL', KEYS[4])
  end
end
local existing = redis.call('GET', KEYS[1])
if existing then
  release()
  return {0, existing}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
local last_seq = tonumber(ARGV[7])
redis.call('HDEL', KEYS[5], ARGV[7])
-- Later messages taken into this turn: each gets the reply on record (unless a turn of its own
-- answered it meanwhile) and its history entry, in order, before the answer.
for i, later in ipairs(cjson.decode(ARGV[12])) do
  if redis.call('SET', KEYS[8 + i], later.reply, 'EX', ARGV[2], 'NX') then
    redis.call('RPUSH', KEYS[2], later.entry)
    if later.channel ~= '' then
      redis.call('PUBLISH', later.channel, later.payload)
    end
  end
  redis.call('HDEL', KEYS[5], later.seq)
  last_seq = math.max(last_seq, later.seq)
end
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
local done = tonumber(redis.call('HGET', KEYS[3], 'seq_done')) or 0
if last_seq > done then
  redis.call('HSET', KEYS[3], 'seq_done', last_seq)
end
for i = 22, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
if ARGV[13] ~= '' then
  local escalation = cjson.decode(ARGV[13])
  redis.call('DEL', KEYS[6])
  for field, value in pairs(escalation) do
    redis.call('HSET', KEYS[6], field, value)
  end
  redis.call('EXPIRE', KEYS[6], ARGV[14])
  redis.call('ZADD', KEYS[7], escalation.created_at, escalation.conversation)
end
-- While a person has the conversation, it must not expire under them; the consoles following
-- it (and the list of escalations) are woken on the events channel.
local ttl = ARGV[6]
if redis.call('HEXISTS', KEYS[3], 'escalation_pending') == 1 then
  ttl = ARGV[14]
  redis.call('EXPIRE', KEYS[6], ARGV[14])
  redis.call('PUBLISH', ARGV[17], ARGV[18])
  redis.call('PUBLISH', ARGV[17], 'escalations')
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
append_events(KEYS[8], ARGV[15], ARGV[16], ttl, ARGV[17], ARGV[18])
if ARGV[11] == '1' then
  release()
end
if ARGV[9] ~= '' then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
-- Only while the entry is this message's: after a failover the id may name another one.
if ARGV[19] ~= '' and holds_entry(KEYS[#KEYS], ARGV[19], ARGV[7], ARGV[21]) then
  redis.call('XACK', KEYS[#KEYS], ARGV[20], ARGV[19])
  redis.call('XDEL', KEYS[#KEYS], ARGV[19])
end
return {1}
