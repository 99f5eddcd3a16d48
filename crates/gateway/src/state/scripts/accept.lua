-- Accepts one inbound message: dedupe, number within its conversation, enqueue. All or nothing,
-- so a platform retry or an nginx retry of the same webhook can never queue a message twice.
-- KEYS[1] oc:seen:{id}   KEYS[2] oc:session:{conv}   KEYS[3] oc:inbox   KEYS[4] oc:pending:{conv}
-- ARGV[1] dedupe ttl (s)   ARGV[2] conversation ttl (s)   ARGV[3] inbox max length
-- ARGV[4] entry format version   ARGV[5] message JSON
-- ARGV[6] '1' = keep the message in the conversation's pending hash until it is answered: a later
-- turn of the same customer can answer it together with its own message, and a later message
-- waiting for it knows it is alive (not lost)
-- KEYS[5] oc:events:{conv}   ARGV[7] the session's events for this message ('' = none)
-- ARGV[8] events max length   ARGV[9] events channel   ARGV[10] conversation
-- ARGV[11] the message's id, stored beside the message so the scripts that check an entry
-- (`holds_entry`) compare it without decoding the message
-- Returns the message's sequence number (>= 1), 0 for a duplicate, -1 when the inbox is full.
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- A write, so that an acknowledged retry's WAIT also covers the first acceptance (WAIT
  -- counts replicas holding this connection's latest write).
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 0
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
local seq = redis.call('HINCRBY', KEYS[2], 'seq_issued', 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'v', ARGV[4], 'seq', seq, 'id', ARGV[11], 'm', ARGV[5])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[4], seq, ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
append_events(KEYS[5], ARGV[7], ARGV[8], ARGV[2], ARGV[9], ARGV[10])
-- A customer of a handed-over conversation wrote: the consoles following it show it now, before
-- its turn (which flood control may delay) runs.
if redis.call('HEXISTS', KEYS[2], 'escalation_pending') == 1 then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
  redis.call('PUBLISH', ARGV[9], 'escalations')
end
return seq
