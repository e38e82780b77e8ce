-- publish: publish one envelope in a room, with its sequence number, log and history.
--
-- KEYS[1] epoch                 Keys.epoch
-- KEYS[2] the room's seq        Keys.room_seq(room)
-- KEYS[3] the room's log        Keys.room_log(room)
-- KEYS[4] the room's history    Keys.room_history(room)
-- ARGV[1] the room's channel    Keys.room_channel(room)
-- ARGV[2] room name
-- ARGV[3] the JSON envelope     codec.encode_body
-- ARGV[4] log length kept       REPLAY_WINDOW
-- ARGV[5] deadline, unix ms on Redis's clock (0: none)
-- ARGV[6] history length kept   HISTORY_KEEP for chat lines and actions, 0 for the rest
--
-- Returns {sequence number (>= 1), epoch}, or 0 when the script ran after its
-- deadline: the caller already told the client the line was not sent,
-- so nothing is published and a timeout never turns into a late send.
-- include: _rooms.lua

local deadline = tonumber(ARGV[5])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return 0 end
end
local r = {seq = KEYS[2], log = KEYS[3], history = KEYS[4], channel = ARGV[1]}
local seq = publish_room(KEYS[1], r, ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6]))
return {seq, redis.call('GET', KEYS[1])}
