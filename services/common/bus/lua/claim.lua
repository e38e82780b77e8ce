-- claim: claim a nickname for a gateway, or confirm it already has it.  A
-- registered nickname is claimed only by a client that proved its password: the
-- check and the claim are one atomic step, so no guest can slip in between.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] the gateway's nicks   Keys.gateway_nicks(gateway)
-- KEYS[3] its account           Keys.account(folded nick)
-- ARGV[1] folded nick
-- ARGV[2] owner record          keys.owner_record(gateway, display nick)
-- ARGV[3] the password hash the claimant proved its password against ('' for none)
--
-- Returns (ClaimResult) 2 newly claimed, 1 already this record's, 0 held by
-- someone else (another gateway, or another display form), -1 registered and
-- ARGV[3] is not its current hash.

local registered = redis.call('HGET', KEYS[3], 'hash')
if registered and registered ~= ARGV[3] then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 2
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
