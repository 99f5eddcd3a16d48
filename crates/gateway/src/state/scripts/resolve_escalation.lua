-- Resolves a conversation's pending escalation: the record says who resolved it and why, the
-- session no longer marks the hand-over (so the bot answers again) and lives the normal
-- conversation TTL again, and the conversation leaves the pending index. One step, so a turn
-- never sees half of it.
-- KEYS[1] oc:escalation:{conv}   KEYS[2] oc:session:{conv}   KEYS[3] oc:escalations
-- KEYS[4] oc:conv:{conv}
-- ARGV[1] resolved_at (ms)   ARGV[2] resolved_by   ARGV[3] note ('' = none)
-- ARGV[4] conversation ttl (s)   ARGV[5] retention of the resolved record (s)
-- ARGV[6] the conversation (index member)   ARGV[7] events channel (consoles are woken there)
-- Returns {0} when there is no record, {1, fields} when resolved now, {2, fields} when it had
-- been resolved before.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[6])
  return {0}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {2, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'status', 'resolved', 'resolved_at', ARGV[1], 'resolved_by', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'note', ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('HDEL', KEYS[2], 'escalation_pending', 'escalation_skill')
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
redis.call('PUBLISH', ARGV[7], ARGV[6])
redis.call('PUBLISH', ARGV[7], 'escalations')
return {1, redis.call('HGETALL', KEYS[1])}
