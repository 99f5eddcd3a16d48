-- Ends a platform turn whose reply went out: the marker that it was delivered (so it is never
-- sent again), the conversation's lease released if the turn still holds it, and the message's
-- inbox entry acknowledged and deleted while the entry is still this message's. One step, so a
-- crash never leaves a sent reply whose entry is still pending (claimed again, found delivered,
-- acknowledged late) nor an entry acknowledged before its reply was marked.
-- KEYS[1] oc:delivered:{id}   KEYS[2] oc:lease:{conv}   KEYS[3] the inbox stream (if ARGV[4] ~= '')
-- ARGV[1] outcome (`sent` or `dead_letter`)   ARGV[2] marker ttl (s)   ARGV[3] holder token
-- ARGV[4] the inbox entry ('' = none)   ARGV[5] the inbox's consumer group
-- ARGV[6] the message's seq   ARGV[7] the message's id
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
-- Only while the entry is this message's: after a failover the id may name another one.
if ARGV[4] ~= '' and holds_entry(KEYS[3], ARGV[4], ARGV[6], ARGV[7]) then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
end
return 1
