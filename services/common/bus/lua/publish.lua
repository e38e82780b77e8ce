-- publish: publish one envelope in a room, with its sequence number, log and history.
--
-- KEYS[1] epoch                 Keys.epoch
-- KEYS[2] the room's seq        Keys.room_seq(room)
-- KEYS[3] the room's log        Keys.room_log(room)
-- KEYS[4] the room's history    Keys.room_history(room)
-- KEYS[5] the room's members    Keys.room_members(room)
-- KEYS[6] the room's sizes      Keys.room_bytes(room)
-- ARGV[1] the room's channel    Keys.room_channel(room)
-- ARGV[2] room name
-- ARGV[3] the JSON envelope     codec.encode_body
-- ARGV[4] log length kept       REPLAY_WINDOW
-- ARGV[5] deadline, unix ms on Redis's clock (0: none)
-- ARGV[6] history length kept   HISTORY_KEEP for chat lines and actions, 0 for the rest
-- ARGV[7] log bytes kept        CHAT_ROOM_LOG_BYTES
-- ARGV[8] history bytes kept    CHAT_ROOM_HISTORY_BYTES
-- ARGV[9] retention of an empty room's keys, seconds     CHAT_ROOM_TTL_S
--
-- Returns {sequence number (>= 1), epoch}, or 0 when the script ran after its
-- deadline: the caller already told the client the line was not sent,
-- so nothing is published and a timeout never turns into a late send.
-- Keys this publication creates in a room without members (its sender was
-- removed meanwhile, e.g. by a reap) get the retention expiry, as if the room
-- had just emptied: a room's keys never outlive it without one.
-- include: _rooms.lua

local deadline = tonumber(ARGV[5])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return 0 end
end
local r = {seq = KEYS[2], log = KEYS[3], history = KEYS[4], channel = ARGV[1], bytes = KEYS[6]}
local seq, created, e = publish_room(KEYS[1], r, ARGV[2], ARGV[3], tonumber(ARGV[4]),
                                     tonumber(ARGV[7]), tonumber(ARGV[6]), tonumber(ARGV[8]))
if created and redis.call('EXISTS', KEYS[5]) == 0 then expire_room(r, tonumber(ARGV[9])) end
return {seq, e}
