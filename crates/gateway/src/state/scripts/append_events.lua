-- Appends events that belong to no other step (typing, the answer as the model writes it).
-- KEYS[1] oc:events:{conv}
-- ARGV[1] events JSON array   ARGV[2] max length   ARGV[3] ttl (s)   ARGV[4] channel
-- ARGV[5] conversation
append_events(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
