-- claim: claim a nickname for a gateway, or confirm it already has it.
--
-- KEYS[1] nicks                 Keys.nicks
-- KEYS[2] the gateway's nicks   Keys.gateway_nicks(gateway)
-- ARGV[1] folded nick
-- ARGV[2] owner record          keys.owner_record(gateway, display nick)
--
-- Returns (ClaimResult) 2 newly claimed, 1 already this record's, 0 held by
-- someone else (another gateway, or another display form).

if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 2
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
