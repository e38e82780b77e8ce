-- register: make the caller's nickname an account, only while the caller holds it,
-- and only while its address has registered fewer than the limit in the window.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] its account           Keys.account(folded nick)
-- KEYS[3] accounts              Keys.accounts
-- KEYS[4] the address's registrations   Keys.registrations_address(address)
-- ARGV[1] folded nick
-- ARGV[2] owner record          keys.owner_record(gateway, display nick)
-- ARGV[3] the password's argon2id hash (never the password)
-- ARGV[4] display nick
-- ARGV[5] now, unix seconds
-- ARGV[6] registrations allowed per address in a window
-- ARGV[7] the window, milliseconds (counted from the first registration)
--
-- Returns {RegisterResult, ms}: {1, 0} registered, {0, 0} already registered,
-- {-1, 0} the nick is not (or no longer) held under this owner record, {-2, ms}
-- the address may register again in ms milliseconds.

if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return {-1, 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[6]) then
  local ttl = redis.call('PTTL', KEYS[4])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[4], ARGV[7])
    ttl = tonumber(ARGV[7])
  end
  return {-2, ttl}
end
redis.call('HSET', KEYS[2], 'hash', ARGV[3], 'nick', ARGV[4], 'created', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('INCR', KEYS[4]) == 1 or redis.call('PTTL', KEYS[4]) < 0 then
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return {1, 0}
