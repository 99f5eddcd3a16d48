-- Counts provider attempts in the breaker all replicas share; the same rules as LocalBreaker
-- (breaker.rs), on Redis's clock. A replica sends its successes in batches (once a second, or
-- ahead of a failure, so its own order holds): a success on every turn would make this one key
-- the hottest of a Redis Cluster.
-- KEYS[1] oc:breaker:{provider} (hash)
-- ARGV[1] 1 = the last outcome is a success, 0 = a failure
-- ARGV[2] 1 = background probe, 0 = a turn's attempt
-- ARGV[3] consecutive failures that open it
-- ARGV[4] failure ratio that opens it, per mille
-- ARGV[5] attempts the window must hold before the ratio counts
-- ARGV[6] window length, ms
-- ARGV[7] who reports (replica id), kept for operators
-- ARGV[8] TTL of the hash, ms
-- ARGV[9] successes that came before the last outcome and are counted first
-- ARGV[10] channel announcing a change (oc:breaker-news:{provider})   ARGV[11] provider name
-- Returns {state, changed}: the state after this outcome, and 1 when this outcome changed it.
local b = KEYS[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HGET', b, 'state') or 'closed'
local ok = ARGV[1] == '1'

local function reset()
  redis.call('HSET', b, 'consecutive', 0, 'calls', 0, 'failures', 0, 'window_start', now)
end
local function finish(new_state, changed)
  if changed == 1 then
    redis.call('HSET', b, 'state', new_state, 'changed_at', now, 'changed_by', ARGV[7])
    redis.call('PUBLISH', ARGV[10], new_state .. ' ' .. ARGV[11])
  end
  redis.call('PEXPIRE', b, ARGV[8])
  return {new_state, changed}
end

if ARGV[2] == '1' then
  if state == 'open' and ok then
    reset()
    return finish('closed', 1)
  end
  return {state, 0}
end
-- Attempts still running when the breaker opened do not count: only a probe closes it.
if state == 'open' then
  return {'open', 0}
end

-- A new ratio window; a run of consecutive failures goes on across it.
local window_start = tonumber(redis.call('HGET', b, 'window_start') or '0')
if now - window_start >= tonumber(ARGV[6]) then
  redis.call('HSET', b, 'calls', 0, 'failures', 0, 'window_start', now)
end
local earlier = tonumber(ARGV[9] or '0')
if earlier > 0 then
  redis.call('HSET', b, 'consecutive', 0)
end
local calls = redis.call('HINCRBY', b, 'calls', 1 + earlier)
if ok then
  redis.call('HSET', b, 'consecutive', 0)
  return finish('closed', 0)
end
local failures = redis.call('HINCRBY', b, 'failures', 1)
local consecutive = redis.call('HINCRBY', b, 'consecutive', 1)
if consecutive >= tonumber(ARGV[3])
    or (calls >= tonumber(ARGV[5]) and failures * 1000 >= tonumber(ARGV[4]) * calls) then
  return finish('open', 1)
end
return finish('closed', 0)
