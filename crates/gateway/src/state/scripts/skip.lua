-- Marks a message done without a reply (it was dead-lettered) so its successors may run, and
-- releases the lease if the caller holds it.
-- KEYS[1] oc:session:{conv}   KEYS[2] oc:lease:{conv}
-- ARGV[1] seq   ARGV[2] holder token   ARGV[3] conversation ttl (s)
local done = tonumber(redis.call('HGET', KEYS[1], 'seq_done')) or 0
if tonumber(ARGV[1]) > done then
  redis.call('HSET', KEYS[1], 'seq_done', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return 1
