-- join_room: add a member to a room (on any gateway) and keep the room's keys.
--
-- KEYS[1] the room's seq        Keys.room_seq(room)
-- KEYS[2] the room's history    Keys.room_history(room)
-- KEYS[3] the room's log        Keys.room_log(room)
-- KEYS[4] the room's members    Keys.room_members(room)
-- KEYS[5] rooms                 Keys.rooms
-- KEYS[6] the nick's rooms      Keys.nick_rooms(folded)
-- ARGV[1] room name
-- ARGV[2] folded nick
-- ARGV[3] display nick
--
-- Returns 1.  The room's counter, history and log lose the expiry they got when
-- the room last emptied.

redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[1])
return 1
