-- auth_attempt: count one password attempt against an account and a client
-- address, unless either has used up its failures in the current window.  The
-- attempt is counted before the password is checked (so concurrent attempts
-- cannot exceed the limit); a correct password takes it back (auth_undo).
--
-- KEYS[1] the account's failures    Keys.auth_failures_nick(folded nick)
-- KEYS[2] the address's failures    Keys.auth_failures_address(address)
-- ARGV[1] failures allowed per account in a window
-- ARGV[2] failures allowed per address in a window
-- ARGV[3] the window, milliseconds (counted from the first failure)
--
-- Returns {0, 0} when the attempt may go on (and was counted), or {1, ms} when
-- the account, {2, ms} when the address is locked for ms more milliseconds.

local function locked(key, limit)
  local n = tonumber(redis.call('GET', key) or '0')
  if n >= limit then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, ARGV[3])
      ttl = tonumber(ARGV[3])
    end
    return ttl
  end
  return nil
end

local ms = locked(KEYS[1], tonumber(ARGV[1]))
if ms then return {1, ms} end
ms = locked(KEYS[2], tonumber(ARGV[2]))
if ms then return {2, ms} end
local function count(key)
  if redis.call('INCR', key) == 1 or redis.call('PTTL', key) < 0 then
    redis.call('PEXPIRE', key, ARGV[3])
  end
end
count(KEYS[1])
count(KEYS[2])
return {0, 0}
