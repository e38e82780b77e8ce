-- leave_room: remove a member from a room and announce it in the same step (only
-- when it was a member: leaving twice is silent); an emptied room's keys expire.
--
-- KEYS[1] the room's members    Keys.room_members(room)
-- KEYS[2] the room's seq        Keys.room_seq(room)
-- KEYS[3] the room's history    Keys.room_history(room)
-- KEYS[4] the room's log        Keys.room_log(room)
-- KEYS[5] rooms                 Keys.rooms (ZSET: room -> minus its member count)
-- KEYS[6] the nick's rooms      Keys.nick_rooms(folded)
-- KEYS[7] epoch                 Keys.epoch
-- KEYS[8] the room's sizes      Keys.room_bytes(room)
-- ARGV[1] room name
-- ARGV[2] folded nick
-- ARGV[3] retention of an emptied room's keys, seconds   CHAT_ROOM_TTL_S
-- ARGV[4] the room's channel    Keys.room_channel(room)
-- ARGV[5] the announcement's JSON envelope (codec.encode_body), or '' for none
-- ARGV[6] log length kept       REPLAY_WINDOW
-- ARGV[7] log bytes kept        CHAT_ROOM_LOG_BYTES
--
-- Returns 1 when the nick was a member, 0 when not.
-- include: _rooms.lua

local r = {members = KEYS[1], seq = KEYS[2], history = KEYS[3], log = KEYS[4], channel = ARGV[4],
           bytes = KEYS[8]}
local removed = redis.call('HDEL', r.members, ARGV[2])
if removed == 1 and ARGV[5] ~= '' then
  publish_room(KEYS[7], r, ARGV[1], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), 0, 0)
end
-- after the publish, so the expiry covers keys the publish may have created
if redis.call('HLEN', r.members) == 0 then
  room_emptied(KEYS[5], r, ARGV[1], tonumber(ARGV[3]))
elseif removed == 1 then
  room_counted(KEYS[5], r.members, ARGV[1])
end
redis.call('SREM', KEYS[6], ARGV[1])
return removed
