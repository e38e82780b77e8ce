-- set_addr: set what one gateway holds from a client address to an absolute
-- count.  The owner uses it to resynchronise after Redis lost its data or
-- after a command's answer was lost; the reaper sets a dead gateway's counts
-- to 0.  Idempotent: running it twice, or from two reapers, is harmless.
--
-- KEYS[1] the address's connections   Keys.addr_conns(address)  HASH gateway -> count
-- KEYS[2] the gateway's addresses     Keys.gateway_addrs(gateway)  SET
-- KEYS[3] the gateway's lease         Keys.gateway_alive(gateway)
-- ARGV[1] the gateway's id
-- ARGV[2] the client address
-- ARGV[3] the count (0 removes the entry)
-- ARGV[4] '1': only if the gateway's lease is gone (the reaper); '0': always
--
-- Returns 1 when set, 0 when the lease was alive and ARGV[4] was '1'.

if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], n)
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 1
