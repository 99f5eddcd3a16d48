-- Starts the turn of one message if it may run now: the conversation's lease free (or already
-- ours), not answered yet, and every earlier message of the conversation done. Takes the lease
-- and returns history and session in the same step.
-- KEYS[1] oc:replied:{id}   KEYS[2] oc:session:{conv}   KEYS[3] oc:lease:{conv}   KEYS[4] oc:conv:{conv}
-- ARGV[1] seq   ARGV[2] holder token   ARGV[3] lease ttl (ms)   ARGV[4] '1' = skip the order check
-- Returns {'replied', reply JSON} | {'wait', 'lease' | 'order'} | {'ready', history, session pairs}
-- The lease comes first: the holder may be sending this very reply on its platform right now.
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
  return {'wait', 'lease'}
end
local replied = redis.call('GET', KEYS[1])
if replied then
  return {'replied', replied}
end
if ARGV[4] ~= '1' then
  local counters = redis.call('HMGET', KEYS[2], 'seq_issued', 'seq_done')
  local issued = tonumber(counters[1]) or 0
  local done = tonumber(counters[2]) or 0
  local seq = tonumber(ARGV[1])
  -- issued < seq means the counters expired and restarted since this message was numbered:
  -- its predecessors are gone with them, so it must not wait.
  if done < seq - 1 and issued >= seq then
    return {'wait', 'order'}
  end
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return {'ready', redis.call('LRANGE', KEYS[4], 0, -1), redis.call('HGETALL', KEYS[2])}
