-- Shared by the scripts that start or finish a message's turn (prepended to each).
-- Whether entry `id` of inbox stream `stream` is message `message_id` numbered `seq`: an id
-- alone could name another entry, written by another primary in the same millisecond (a
-- primary failed over before its write reached a replica).
local function holds_entry(stream, id, seq, message_id)
  local entry = redis.call('XRANGE', stream, id, id)[1]
  if not entry then
    return false
  end
  local entry_seq, message
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'seq' then
      entry_seq = entry[2][i + 1]
    elseif entry[2][i] == 'm' then
      message = entry[2][i + 1]
    end
  end
  if entry_seq ~= seq or not message then
    return false
  end
  local decoded, parsed = pcall(cjson.decode, message)
  return decoded and parsed.message_id == message_id
end
