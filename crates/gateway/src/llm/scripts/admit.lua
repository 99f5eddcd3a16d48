-- Admission of one provider call, in one round trip: is the provider's circuit open, and does
-- its shared budget (GCRA on Redis's clock, one budget for the whole cluster) take the call now
-- or within the caller's longest wait? A call that fits books its slot, so concurrent callers on
-- any replica queue in order instead of all seeing the same free slot.
-- KEYS[1] oc:breaker:{provider} (hash)
-- KEYS[2] oc:rl:{provider} (theoretical arrival time, µs)
-- KEYS[3] oc:rl:{provider}:key:<key> (the same for the caller's key)
-- ARGV[1] budget emission interval, µs (0 = no budget)
-- ARGV[2] budget burst tolerance, µs
-- ARGV[3] per-key emission interval, µs (0 = no per-key limit)
-- ARGV[4] per-key burst tolerance, µs
-- ARGV[5] longest wait the caller accepts, µs
-- Returns {verdict, wait_us}: 'open'; 'over' (the wait it would take); 'go' (sleep wait_us, then
-- call).
if redis.call('HGET', KEYS[1], 'state') == 'open' then
  return {'open', 0}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local function arrival(key, interval)
  if interval <= 0 then
    return nil
  end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then
    tat = now
  end
  return tat
end

local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local key_interval, key_tolerance = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = arrival(KEYS[2], interval)
local key_tat = arrival(KEYS[3], key_interval)
local wait = 0
if tat then
  wait = math.max(wait, tat - tolerance - now)
end
if key_tat then
  wait = math.max(wait, key_tat - key_tolerance - now)
end
if wait > tonumber(ARGV[5]) then
  return {'over', math.floor(wait)}
end

local function book(key, t, step)
  local next_tat = t + step
  redis.call('SET', key, string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
end
if tat then
  book(KEYS[2], tat, interval)
end
if key_tat then
  book(KEYS[3], key_tat, key_interval)
end
return {'go', math.floor(wait)}
