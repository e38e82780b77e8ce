-- register: make the caller's nickname an account, only while the caller holds it.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] its account           Keys.account(folded nick)
-- KEYS[3] accounts              Keys.accounts
-- ARGV[1] folded nick
-- ARGV[2] owner record          keys.owner_record(gateway, display nick)
-- ARGV[3] the password's argon2id hash (never the password)
-- ARGV[4] display nick
-- ARGV[5] now, unix seconds
--
-- Returns (RegisterResult) 1 registered, 0 already registered, -1 the nick is
-- not (or no longer) held under this owner record.

if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'hash', ARGV[3], 'nick', ARGV[4], 'created', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
