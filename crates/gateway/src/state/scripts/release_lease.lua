-- Releases a lease only if the caller still holds it.
-- KEYS[1] oc:lease:{conv}   ARGV[1] holder token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
