-- set_password: replace an account's password hash, only if it is still the hash
-- the caller verified the old password against (a concurrent change wins once).
--
-- KEYS[1] the account           Keys.account(folded nick)
-- ARGV[1] the current hash the old password was verified against
-- ARGV[2] the new password's hash
-- ARGV[3] now, unix seconds
--
-- Returns 1 changed, 0 the account is gone or its hash changed meanwhile.

if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'changed', ARGV[3])
return 1
