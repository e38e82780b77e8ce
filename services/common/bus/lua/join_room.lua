-- join_room: add a member to a room (on any gateway), keep the room's keys, and
-- announce the join in the same step, so no crash can leave a membership that
-- the room was never told about.
--
-- KEYS[1] the room's seq        Keys.room_seq(room)
-- KEYS[2] the room's history    Keys.room_history(room)
-- KEYS[3] the room's log        Keys.room_log(room)
-- KEYS[4] the room's members    Keys.room_members(room)
-- KEYS[5] rooms                 Keys.rooms (ZSET: room -> minus its member count)
-- KEYS[6] the nick's rooms      Keys.nick_rooms(folded)
-- KEYS[7] epoch                 Keys.epoch
-- KEYS[8] the room's sizes      Keys.room_bytes(room)
-- ARGV[1] room name
-- ARGV[2] folded nick
-- ARGV[3] display nick
-- ARGV[4] the room's channel    Keys.room_channel(room)
-- ARGV[5] the announcement's JSON envelope (codec.encode_body), or '' for none
-- ARGV[6] log length kept       REPLAY_WINDOW
-- ARGV[7] '1': the join may create the room; '0': a room with no members is
--         not joined (the caller's room-creation budget is spent)
-- ARGV[8] log bytes kept        CHAT_ROOM_LOG_BYTES
--
-- Returns {sequence number, created}: the announcement's sequence number, or 0
-- when nothing was announced (none asked for, or the nick was a member already:
-- joining twice is silent), and 1 when the room had no members before.  Returns
-- -1 (and changes nothing) when the room has no members and ARGV[7] is '0'.
-- The room's counter, history, log and sizes lose the expiry they got when the
-- room last emptied: a room with members never expires.
-- include: _rooms.lua

local created = 0
if redis.call('EXISTS', KEYS[4]) == 0 then
  if ARGV[7] == '0' then return -1 end
  created = 1
end
-- HSET first of the writes: at maxmemory (noeviction) Redis refuses it before
-- anything changed, so a join is refused whole rather than run past the limit.
local added = redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
redis.call('PERSIST', KEYS[8])
room_counted(KEYS[5], KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
local seq = 0
if added == 1 and ARGV[5] ~= '' then
  local r = {seq = KEYS[1], history = KEYS[2], log = KEYS[3], channel = ARGV[4], bytes = KEYS[8]}
  seq = publish_room(KEYS[7], r, ARGV[1], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[8]), 0, 0)
end
return {seq, created}
