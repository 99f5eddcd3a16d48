-- A person's message to a customer whose conversation is handed over, in two steps around the
-- platform's send, so it goes out once per idempotency key and the history holds only what
-- reached the customer. 'reserve' checks the escalation (pending, and claimed by this person
-- or by nobody: then it claims it for them) and records the message as sending under its
-- idempotency key; a repeated key gets the first call's record back. On web chat the event the
-- widget follows is the delivery, so 'reserve' with ARGV[9] = '1' finishes at once. 'sent'
-- appends the history entry and counts the reply; 'failed' keeps the reason.
-- KEYS[1] oc:escalation:{conv}   KEYS[2] oc:person:{conv}:<idempotency key>
-- KEYS[3] oc:conv:{conv}   KEYS[4] oc:events:{conv}
-- ARGV[1] step: 'reserve' | 'sent' | 'failed'   ARGV[2] by   ARGV[3] '1' = take it over
-- ARGV[4] now (ms)   ARGV[5] message id   ARGV[6] history entry JSON   ARGV[7] history limit
-- ARGV[8] ttl of the idempotency record (s)   ARGV[9] '1' = delivered by this step
-- ARGV[10] events JSON ('' = none)   ARGV[11] events max length   ARGV[12] events channel
-- ARGV[13] conversation   ARGV[14] why it failed (step 'failed')
-- Returns {outcome, message id, status, reason, holder, first}: outcome 'new', 'existing',
-- 'held' (holder named), 'not_pending', 'unknown'; first = 1 when this was the first message a
-- person sent on this escalation.
local function record()
  local r = redis.call('HMGET', KEYS[2], 'message_id', 'status', 'reason')
  return {r[1] or '', r[2] or '', r[3] or ''}
end
local function sent()
  redis.call('RPUSH', KEYS[3], ARGV[6])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
  -- The history lives as long as the pending escalation keeps the conversation.
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[3], ttl)
  end
  redis.call('HSET', KEYS[2], 'status', 'sent')
  local first = 0
  if redis.call('HSETNX', KEYS[1], 'first_reply_at', ARGV[4]) == 1 then
    first = 1
  end
  redis.call('HINCRBY', KEYS[1], 'agent_replies', 1)
  append_events(KEYS[4], ARGV[10], ARGV[11], ttl > 0 and ttl or ARGV[8], ARGV[12], ARGV[13])
  -- Consoles following the conversation or the list read on.
  redis.call('PUBLISH', ARGV[12], ARGV[13])
  redis.call('PUBLISH', ARGV[12], 'escalations')
  return first
end

if ARGV[1] == 'sent' then
  if redis.call('HGET', KEYS[2], 'status') ~= 'sending' then
    local r = record()
    return {'existing', r[1], r[2], r[3], '', 0}
  end
  local first = sent()
  return {'new', ARGV[5], 'sent', '', ARGV[2], first}
end
if ARGV[1] == 'failed' then
  redis.call('HSET', KEYS[2], 'status', 'failed', 'reason', ARGV[14])
  return {'new', ARGV[5], 'failed', ARGV[14], ARGV[2], 0}
end

if redis.call('EXISTS', KEYS[2]) == 1 then
  local r = record()
  return {'existing', r[1], r[2], r[3], '', 0}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'unknown', '', '', '', '', 0}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {'not_pending', '', '', '', '', 0}
end
local holder = redis.call('HGET', KEYS[1], 'claimed_by')
if holder and holder ~= '' and holder ~= ARGV[2] and ARGV[3] ~= '1' then
  return {'held', '', '', '', holder, 0}
end
if holder ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'claimed_by', ARGV[2], 'claimed_at', ARGV[4])
end
redis.call('HSET', KEYS[2], 'message_id', ARGV[5], 'status', 'sending', 'by', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[8])
if ARGV[9] == '1' then
  local first = sent()
  return {'new', ARGV[5], 'sent', '', ARGV[2], first}
end
return {'new', ARGV[5], 'sending', '', ARGV[2], 0}
