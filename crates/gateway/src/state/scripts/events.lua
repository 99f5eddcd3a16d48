-- Shared by the scripts that write a web-chat session's events (prepended to each).
-- Appends `events` (a JSON array of event JSON texts; '' = none) to the session's stream `key`,
-- trimmed to about `maxlen` entries and expiring with the conversation (`ttl` seconds), and
-- announces the conversation on `channel` so every replica's open event streams read on.
local function append_events(key, events, maxlen, ttl, channel, conversation)
  if events == '' then
    return
  end
  for _, event in ipairs(cjson.decode(events)) do
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'e', event)
  end
  redis.call('EXPIRE', key, ttl)
  redis.call('PUBLISH', channel, conversation)
end
