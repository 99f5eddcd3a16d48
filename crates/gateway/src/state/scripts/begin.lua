-- Starts the turn of one message if it may run now: the conversation's lease free (or already
-- ours), not answered yet, and every earlier message of the conversation done. Takes the lease,
-- writes the typing event and returns history and session in the same step.
-- KEYS[1] oc:replied:{id}   KEYS[2] oc:session:{conv}   KEYS[3] oc:lease:{conv}   KEYS[4] oc:conv:{conv}
-- KEYS[5] oc:pending:{conv}
-- ARGV[1] seq   ARGV[2] holder token   ARGV[3] lease ttl (ms)   ARGV[4] '1' = skip the order check
-- ARGV[5] most later messages to take into this turn (0 = answer this one alone)
-- ARGV[6] flood control: ms between two turns of one customer at the steady rate (0 = off)
-- ARGV[7] flood control: how far ahead of that rate a customer may run, ms
-- KEYS[7] the inbox stream holding the message's entry   ARGV[8] the entry's id ('' = none: the
-- message did not come from the inbox)   ARGV[9] the message's id
-- KEYS[6] oc:events:{conv}   ARGV[10] the typing event to write when the turn starts ('' = none)
-- ARGV[11] events max length   ARGV[12] events channel   ARGV[13] conversation
-- ARGV[14] conversation ttl (s)
-- Returns {'replied', reply JSON} | {'wait', 'lease' | 'order' | 'gap'} | {'wait', 'flood', ms}
--       | {'not_queued'}
--       | {'ready', history, session pairs, {seq, message JSON, ...} of the later messages taken}
-- The lease comes first: the holder may be sending this very reply on its platform right now.
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
  return {'wait', 'lease'}
end
-- An entry this Redis does not hold was written to a primary that was failed over before the
-- write reached a replica (never acknowledged: it is sent again), or dead-lettered meanwhile.
-- Its sequence number is not this Redis's: it would pass the order check below as a restart,
-- and acknowledging it here could remove another entry. Checked before the reply record, so
-- such an entry is never acknowledged: the entry of its resend is.
if ARGV[8] ~= '' and not holds_entry(KEYS[7], ARGV[8], ARGV[1], ARGV[9]) then
  return {'not_queued'}
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
    -- 'order': the next message to answer is still accepted and unanswered (in the pending
    -- hash), merely waiting, e.g. for flood control; 'gap': it is nowhere, so only the safety
    -- valve (workers.orderWaitMs) lets this one go ahead.
    if redis.call('HEXISTS', KEYS[5], done + 1) == 1 then
      return {'wait', 'order'}
    end
    return {'wait', 'gap'}
  end
end
-- Flood control: a customer's turns follow a GCRA on Redis's clock; a turn that comes too soon
-- waits, and what the customer sends meanwhile is answered with it.
local interval = tonumber(ARGV[6])
if interval > 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local tat = math.max(tonumber(redis.call('HGET', KEYS[2], 'turn_tat') or '0'), now)
  local wait = tat - tonumber(ARGV[7]) - now
  if wait > 0 then
    return {'wait', 'flood', wait}
  end
  redis.call('HSET', KEYS[2], 'turn_tat', string.format('%.0f', tat + interval))
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
local taken = {}
local most = tonumber(ARGV[5])
if most > 0 then
  local seq = tonumber(ARGV[1])
  local issued = tonumber(redis.call('HGET', KEYS[2], 'seq_issued')) or 0
  for next_seq = seq + 1, math.min(issued, seq + most) do
    local message = redis.call('HGET', KEYS[5], next_seq)
    if not message then
      break
    end
    taken[#taken + 1] = next_seq
    taken[#taken + 1] = message
  end
end
-- The customer sees the agent at work from now on; not while a person has the conversation.
if redis.call('HEXISTS', KEYS[2], 'escalation_pending') == 0 then
  append_events(KEYS[6], ARGV[10], ARGV[11], ARGV[14], ARGV[12], ARGV[13])
end
return {'ready', redis.call('LRANGE', KEYS[4], 0, -1), redis.call('HGETALL', KEYS[2]), taken}
