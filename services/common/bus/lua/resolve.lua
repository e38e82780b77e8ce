-- resolve: whether a publication that got no answer is in its room's log.
--
-- KEYS[1] the room's log        Keys.room_log(room)
-- ARGV[1] the publication's id (the envelope's "i")
-- ARGV[2] its deadline, unix ms on Redis's clock
-- ARGV[3] when it was submitted, unix seconds (float)
-- ARGV[4] the log's full length REPLAY_WINDOW
-- ARGV[5] the publishing gateway (the envelope's "g"): ids count per gateway
--         process, so the id and the origin must both match
--
-- Returns (Resolution in bus.py) -1 while Redis's clock has not passed the
-- deadline (the publish may still run: ask again later), the publication's
-- sequence number when it is in the log, 0 when it is not and can no longer be,
-- -2 when the log was trimmed (it is full, or, trimmed by bytes, its oldest entry
-- is not the room's first publication) and no longer reaches back to when it was
-- submitted (unknown).  Relies on codec.encode_body's compact JSON ('"i":"<id>"', '"g":"<id>"').

local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) <= tonumber(ARGV[2]) then
  return -1
end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local needle = '"i":"' .. ARGV[1] .. '"'
local origin = '"g":"' .. ARGV[5] .. '"'
for i = #entries, 1, -1 do
  local entry = entries[i]
  if string.find(entry, needle, 1, true) and string.find(entry, origin, 1, true) then
    local seq = string.match(entry, '^%S+ (%d+) ')
    return tonumber(seq)
  end
end
-- The log and the counter are created together, so an oldest entry numbered
-- above 1 means older entries were trimmed.
local trimmed = #entries >= tonumber(ARGV[4])
  or (#entries > 0 and tonumber(string.match(entries[1], '^%S+ (%d+) ') or 2) > 1)
if trimmed then
  local ok, first = pcall(cjson.decode, string.match(entries[1], '^%S+ %d+ %S+ (.*)$'))
  if not ok or type(first) ~= 'table' or tonumber(first.t or 0) > tonumber(ARGV[3]) then
    return -2
  end
end
return 0
