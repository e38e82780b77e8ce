-- release: release a nickname, leave its rooms and announce the leave in each,
-- atomically.  A room left empty has its keys set to expire.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] the gateway's nicks   Keys.gateway_nicks(gateway)
-- KEYS[3] the nick's rooms      Keys.nick_rooms(folded)
-- KEYS[4] epoch                 Keys.epoch
-- KEYS[5] rooms                 Keys.rooms (ZSET: room -> minus its member count)
-- ARGV[1] folded nick
-- ARGV[2] owner record          keys.owner_record(gateway, display nick)
-- ARGV[3] the leave envelope    codec.encode_body('leave', ...)
-- ARGV[4] log length kept       REPLAY_WINDOW
-- ARGV[5] retention of an emptied room's keys, seconds   CHAT_ROOM_TTL_S
-- ARGV[6..11] room key patterns Keys.room_patterns(): the keys of each room the
--             nick is in are derived from them (the documented exception)
-- ARGV[12] log bytes kept       CHAT_ROOM_LOG_BYTES
--
-- Returns 1 when released, 0 when the nick was not (or no longer) this record's
-- (it is dropped from the gateway's set either way).
-- include: _rooms.lua

redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local keep, retention, log_bytes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[12])
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local r = room_keys(6, room)
  redis.call('HDEL', r.members, ARGV[1])
  publish_room(KEYS[4], r, room, ARGV[3], keep, log_bytes, 0, 0)
  -- after the publish, so the expiry covers keys the publish may have created
  if redis.call('HLEN', r.members) == 0 then
    room_emptied(KEYS[5], r, room, retention)
  else
    room_counted(KEYS[5], r.members, room)
  end
end
redis.call('DEL', KEYS[3])
return 1
