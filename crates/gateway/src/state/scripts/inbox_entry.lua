-- Shared by the scripts that start or finish a message's turn (prepended to each).
-- Whether entry `id` of inbox stream `stream` is message `message_id` numbered `seq`: an id
-- alone could name another entry, written by another primary in the same millisecond (a
-- primary failed over before its write reached a replica).
local function holds_entry(stream, id, seq, message_id)
  local entry = redis.call('XRANGE', stream, id, id)[1]
  if not entry then
    return false
  end
  local entry_seq, entry_message_id, message
  for i = 1, #entry[2], 2 do
    local field = entry[2][i]
    if field == 'seq' then
      entry_seq = entry[2][i + 1]
    elseif field == 'id' then
      entry_message_id = entry[2][i + 1]
    elseif field == 'm' then
      message = entry[2][i + 1]
    end
  end
  if entry_seq ~= seq then
    return false
  end
  if entry_message_id then
    return entry_message_id == message_id
  end
  -- An entry accepted before entries carried the message id (by an older replica): the id is
  -- inside the message.
  if not message then
    return false
  end
  local decoded, parsed = pcall(cjson.decode, message)
  return decoded and parsed.message_id == message_id
end
