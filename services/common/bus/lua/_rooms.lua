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

-- A room's keys and channel from the six patterns at ARGV[first] onwards, in
-- the order of Keys.room_patterns(): members, seq, history, log, channel, bytes.
local function room_keys(first, room)
  return {
    members = expand(ARGV[first], room),
    seq = expand(ARGV[first + 1], room),
    history = expand(ARGV[first + 2], room),
    log = expand(ARGV[first + 3], room),
    channel = expand(ARGV[first + 4], room),
    bytes = expand(ARGV[first + 5], room),
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

-- Append `payload` to the list `list`, then drop its oldest entries until it holds
-- at most `keep` entries and at most `max_bytes` bytes (the newest entry always
-- stays).  The list's byte total is field `field` of the hash `sizes`; a total
-- that went missing (or never existed for an older list) is counted again once.
-- Three calls when the list is full by entries (RPUSH, LPOP, HINCRBY); more only
-- when the bytes are over.  Returns true when this call created the list or its total.
local function push_capped(list, sizes, field, payload, keep, max_bytes)
  local len = redis.call('RPUSH', list, payload)
  local created = len == 1
  local delta = #payload
  if len == keep + 1 then  -- the usual case once the list is full
    delta = delta - #redis.call('LPOP', list)
    len = keep
  elseif len > keep then
    for _, entry in ipairs(redis.call('LPOP', list, len - keep)) do delta = delta - #entry end
    len = keep
  end
  local total = redis.call('HINCRBY', sizes, field, delta)
  if len > 1 and total <= #payload then
    -- the newest entry alone is #payload bytes: the total was missing
    total = 0
    for _, entry in ipairs(redis.call('LRANGE', list, 0, -1)) do total = total + #entry end
    redis.call('HSET', sizes, field, total)
    created = true
  end
  if total > max_bytes and len > 1 then
    while total > max_bytes and len > 1 do
      total = total - #redis.call('LPOP', list)
      len = len - 1
    end
    redis.call('HSET', sizes, field, total)
  end
  return created
end

-- Publish `body` (a JSON envelope) in `room` with the next sequence number:
-- "<epoch> <seq> <room> <body>" goes to the room's channel, to its log (at most
-- `keep` entries and `log_bytes` bytes; keep 0: not logged) and, when
-- `history_keep` > 0, to its history (at most that many entries and
-- `history_bytes` bytes).  `r` holds the room's keys (see room_keys).  Returns
-- seq, whether this call created any of the room's keys, and the epoch.
-- A room's numbering belongs to an epoch (field `numbering` of its sizes hash): in
-- a new epoch it restarts from 1, so that after a promotion of a replica that
-- lagged, numbers the gateways have already seen under the old epoch are never
-- reused under it.  (A room counted before epochs were recorded keeps counting.)
local function publish_room(epoch_key, r, room, body, keep, log_bytes, history_keep, history_bytes)
  local e = epoch(epoch_key)
  local counted_in = redis.call('HGET', r.bytes, 'numbering')
  if counted_in ~= e then
    if counted_in then redis.call('SET', r.seq, 0, 'KEEPTTL') end
    redis.call('HSET', r.bytes, 'numbering', e)
  end
  local seq = redis.call('INCR', r.seq)
  local created = seq == 1
  local payload = e .. ' ' .. seq .. ' ' .. room .. ' ' .. body
  if keep > 0 and push_capped(r.log, r.bytes, 'log', payload, keep, log_bytes) then
    created = true
  end
  if history_keep > 0
      and push_capped(r.history, r.bytes, 'history', payload, history_keep, history_bytes) then
    created = true
  end
  redis.call('PUBLISH', r.channel, payload)
  return seq, created, e
end

-- Let a room's counter, history, log and byte totals expire after `retention`
-- seconds (a join persists them).
local function expire_room(r, retention)
  redis.call('EXPIRE', r.seq, retention)
  redis.call('EXPIRE', r.history, retention)
  redis.call('EXPIRE', r.log, retention)
  redis.call('EXPIRE', r.bytes, retention)
end

-- Record the room's member count in the rooms sorted set (Keys.rooms), scored
-- by minus the count so that ZRANGE lists the largest rooms first, ties by name.
local function room_counted(rooms_key, members_key, room)
  redis.call('ZADD', rooms_key, -redis.call('HLEN', members_key), room)
end

-- The room has no members left: forget it in the rooms sorted set and let its
-- keys expire after `retention` seconds.
local function room_emptied(rooms_key, r, room, retention)
  redis.call('ZREM', rooms_key, room)
  expire_room(r, retention)
end
