-- Helpers shared by the scripts that publish in a room, count or empty one, or
-- derive key names (publish, release, reap, join_room, leave_room, rename).  Not a script:
-- services/common/bus/scripts.py puts this file in front of each script whose
-- header says "-- include: _rooms.lua".
--
-- Key names are never built here: a script gets them in KEYS[], or, where it
-- must find a nickname's rooms (or a gateway's nicknames) as it goes, as
-- patterns built by services/common/keys.py (Keys.*_pattern, '*' where the name
-- goes), expanded with expand().  Those derived names are the one exception to
-- "every key in KEYS[]"; they keep release and reap atomic on one Redis.

-- The name `name` in place of the '*' of `pattern` (a key prefix has no '*').
local function expand(pattern, name)
  local at = string.find(pattern, '*', 1, true)
  return string.sub(pattern, 1, at - 1) .. name .. string.sub(pattern, at + 1)
end

-- A room's keys and channel from the five patterns at ARGV[first] onwards, in
-- the order of Keys.room_patterns(): members, seq, history, log, channel.
local function room_keys(first, room)
  return {
    members = expand(ARGV[first], room),
    seq = expand(ARGV[first + 1], room),
    history = expand(ARGV[first + 2], room),
    log = expand(ARGV[first + 3], room),
    channel = expand(ARGV[first + 4], room),
  }
end

-- The epoch, created from Redis's clock the first time (after Redis lost its data).
local function epoch(epoch_key)
  local e = redis.call('GET', epoch_key)
  if not e then
    local t = redis.call('TIME')
    e = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', epoch_key, e)
  end
  return e
end

-- Publish `body` (a JSON envelope) in `room` with the next sequence number:
-- "<epoch> <seq> <room> <body>" goes to the room's channel, to its log (trimmed to
-- `keep` entries; 0: not logged) and, when `history_keep` > 0, to its history
-- (trimmed to that many).  `r` holds the room's keys (see room_keys).  Returns seq.
local function publish_room(epoch_key, r, room, body, keep, history_keep)
  local seq = redis.call('INCR', r.seq)
  local payload = epoch(epoch_key) .. ' ' .. seq .. ' ' .. room .. ' ' .. body
  if keep > 0 then
    redis.call('RPUSH', r.log, payload)
    redis.call('LTRIM', r.log, -keep, -1)
  end
  if history_keep > 0 then
    redis.call('RPUSH', r.history, payload)
    redis.call('LTRIM', r.history, -history_keep, -1)
  end
  redis.call('PUBLISH', r.channel, payload)
  return seq
end

-- Record the room's member count in the rooms sorted set (Keys.rooms), scored
-- by minus the count so that ZRANGE lists the largest rooms first, ties by name.
local function room_counted(rooms_key, members_key, room)
  redis.call('ZADD', rooms_key, -redis.call('HLEN', members_key), room)
end

-- The room has no members left: forget it in the rooms sorted set and let its
-- counter, history and log expire after `retention` seconds (a join persists them).
local function room_emptied(rooms_key, r, room, retention)
  redis.call('ZREM', rooms_key, room)
  redis.call('EXPIRE', r.seq, retention)
  redis.call('EXPIRE', r.history, retention)
  redis.call('EXPIRE', r.log, retention)
end
