-- Assigns a conversation's pending escalation to one dispatcher, atomically: two dispatchers
-- claiming at once get one winner. Claiming again as the holder is a no-op; another person
-- takes it only when asking to take it over.
-- KEYS[1] oc:escalation:{conv}
-- ARGV[1] who claims   ARGV[2] '1' = take it over from whoever holds it   ARGV[3] now (ms)
-- ARGV[4] events channel (consoles are woken there)   ARGV[5] the conversation
-- Returns {'unknown'}, {'not_pending', fields}, {'held', fields} (held by another: see its
-- claimed_by) or {'claimed', fields}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unknown'}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'not_pending', redis.call('HGETALL', KEYS[1])}
end
local holder = redis.call('HGET', KEYS[1], 'claimed_by')
if holder and holder ~= '' and holder ~= ARGV[1] and ARGV[2] ~= '1' then
  return {'held', redis.call('HGETALL', KEYS[1])}
end
if holder ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'claimed_by', ARGV[1], 'claimed_at', ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  redis.call('PUBLISH', ARGV[4], 'escalations')
end
return {'claimed', redis.call('HGETALL', KEYS[1])}
