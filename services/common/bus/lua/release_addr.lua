-- release_addr: one connection from a client address on this gateway ended.
--
-- KEYS[1] the address's connections   Keys.addr_conns(address)  HASH gateway -> count
-- KEYS[2] the gateway's addresses     Keys.gateway_addrs(gateway)  SET
-- ARGV[1] the gateway's id
-- ARGV[2] the client address
--
-- Returns what the gateway still holds from the address (never below 0).

local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
return left
