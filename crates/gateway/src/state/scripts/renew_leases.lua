-- Extends the leases still held by their holders; a lease taken over meanwhile is left alone.
-- KEYS[i] oc:lease:{conv}   ARGV[1] lease ttl (ms)   ARGV[i + 1] holder token of KEYS[i]
-- Returns how many leases were extended.
local extended = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    extended = extended + 1
  end
end
return extended
