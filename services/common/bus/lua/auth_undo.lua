-- auth_undo: take back an attempt auth_attempt counted, once its password proved
-- correct, so only failures count.
--
-- KEYS[1] the account's failures    Keys.auth_failures_nick(folded nick)
-- KEYS[2] the address's failures    Keys.auth_failures_address(address)
--
-- Returns nothing useful (0).

local function undo(key)
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
undo(KEYS[1])
undo(KEYS[2])
return 0
