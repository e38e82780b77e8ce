-- reap: release every user of a gateway whose lease expired and announce their
-- leaves, exactly once: only the caller whose ZREM removed the gateway from the
-- registry does the work, and the whole script is atomic.
--
-- KEYS[1] gateways              Keys.gateways
-- KEYS[2] its lease             Keys.gateway_alive(gateway)
-- KEYS[3] its nicks             Keys.gateway_nicks(gateway)
-- KEYS[4] its info              Keys.gateway_info(gateway)
-- KEYS[5] nicks                 Keys.nicks
-- KEYS[6] epoch                 Keys.epoch
-- KEYS[7] rooms                 Keys.rooms (ZSET: room -> minus its member count)
-- ARGV[1] the dead gateway's id
-- ARGV[2] log length kept       REPLAY_WINDOW
-- ARGV[3] now, unix seconds (the leaves' "t")
-- ARGV[4] force: '1' ignores the lease (a predecessor known dead by other means)
-- ARGV[5] retention of an emptied room's keys, seconds   CHAT_ROOM_TTL_S
-- ARGV[6] nick rooms pattern    Keys.nick_rooms_pattern
-- ARGV[7..12] room key patterns Keys.room_patterns()
--             (each nick's rooms and each room's keys are derived from these
--             patterns: the documented exception)
-- ARGV[13] log bytes kept       CHAT_ROOM_LOG_BYTES
--
-- Returns the display nicks released (empty: the lease is alive and no force,
-- or another caller reaped it first).  Each leave envelope is the one of
-- codec.encode_body: {"k":"leave","n":display,"x":"gateway lost","g":gateway,"t":now}.
-- include: _rooms.lua

local gw, keep, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local log_bytes = tonumber(ARGV[13])
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {} end
if redis.call('ZREM', KEYS[1], gw) == 0 then return {} end
local released = {}
local owner_len = string.len(gw) + 1
for _, folded in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local record = redis.call('HGET', KEYS[5], folded)
  -- only names still recorded as this gateway's ("<gateway> <display>")
  if record and string.sub(record, 1, owner_len) == gw .. ' ' then
    local display = string.sub(record, owner_len + 1)
    redis.call('HDEL', KEYS[5], folded)
    local rooms_key = expand(ARGV[6], folded)
    for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
      local r = room_keys(7, room)
      redis.call('HDEL', r.members, folded)
      local body = cjson.encode({k = 'leave', n = display, x = 'gateway lost', g = gw,
                                 t = tonumber(ARGV[3])})
      publish_room(KEYS[6], r, room, body, keep, log_bytes, 0, 0)
      if redis.call('HLEN', r.members) == 0 then
        room_emptied(KEYS[7], r, room, retention)
      else
        room_counted(KEYS[7], r.members, room)
      end
    end
    redis.call('DEL', rooms_key)
    table.insert(released, display)
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[2])
return released
