-- rename: move a nickname to a new one (or a new display case of the same one)
-- with its room memberships, and announce it in each of its rooms, atomically:
-- no crash can leave a rename that a room was not told about.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] the gateway's nicks   Keys.gateway_nicks(gateway)
-- KEYS[3] the old nick's rooms  Keys.nick_rooms(old folded)
-- KEYS[4] the new nick's rooms  Keys.nick_rooms(new folded) (= KEYS[3] for a case change)
-- KEYS[5] epoch                 Keys.epoch
-- KEYS[6] the new nick's account Keys.account(new folded)
-- ARGV[1] old folded nick
-- ARGV[2] old owner record      keys.owner_record(gateway, old display nick)
-- ARGV[3] new folded nick
-- ARGV[4] new owner record      keys.owner_record(gateway, new display nick)
-- ARGV[5] new display nick
-- ARGV[6..11] room patterns     Keys.room_patterns(): each room's keys are derived
--                               from them (the documented exception)
-- ARGV[12] the announcement's JSON envelope (codec.encode_body, kind "nick")
-- ARGV[13] log length kept      REPLAY_WINDOW
-- ARGV[14] log bytes kept       CHAT_ROOM_LOG_BYTES
-- ARGV[15] the password hash the caller proved for the new nick ('' for none)
--
-- A rename empties no room (each keeps the member under its new name), so the
-- rooms' keys stay without expiry.
--
-- Returns (RenameResult) 1 renamed, 0 the new nick is taken, -1 the old nick is
-- not (or no longer) this record's, -2 the new nick is registered and ARGV[15]
-- is not its current hash (checked in the same step as the claim).
-- include: _rooms.lua

if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
local rooms
if ARGV[1] ~= ARGV[3] then
  local registered = redis.call('HGET', KEYS[6], 'hash')
  if registered and registered ~= ARGV[15] then return -2 end
  if redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[4]) == 0 then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[3])
  rooms = redis.call('SMEMBERS', KEYS[3])
  for _, room in ipairs(rooms) do
    local m = expand(ARGV[6], room)
    redis.call('HDEL', m, ARGV[1])
    redis.call('HSET', m, ARGV[3], ARGV[5])
    redis.call('SADD', KEYS[4], room)
  end
  redis.call('DEL', KEYS[3])
else
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  rooms = redis.call('SMEMBERS', KEYS[4])
  for _, room in ipairs(rooms) do
    redis.call('HSET', expand(ARGV[6], room), ARGV[3], ARGV[5])
  end
end
for _, room in ipairs(rooms) do
  publish_room(KEYS[5], room_keys(6, room), room, ARGV[12], tonumber(ARGV[13]),
               tonumber(ARGV[14]), 0, 0)
end
return 1
