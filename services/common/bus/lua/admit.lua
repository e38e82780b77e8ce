-- admit: count one new connection from a client address, cluster-wide, if the
-- address is under both of its limits: the connect rate (a token bucket on
-- Redis's clock) and the connections it holds on every gateway together.
-- Every attempt spends a token, refused or not, so hammering does not pay.
--
-- KEYS[1] the address's connections   Keys.addr_conns(address)  HASH gateway -> count
-- KEYS[2] the address's rate bucket   Keys.addr_rate(address)   HASH tokens, at (ms)
-- KEYS[3] the gateway's addresses     Keys.gateway_addrs(gateway)  SET
-- ARGV[1] the admitting gateway's id
-- ARGV[2] the client address
-- ARGV[3] connections allowed per address (0: no limit)
-- ARGV[4] connections per second per address ('inf': no rate limit)
-- ARGV[5] burst: connections at once before the rate applies
--
-- Returns {1, held} (admitted; held counts this one), {0, 'rate', 0} or
-- {0, 'connections', held}.

local gw, address = ARGV[1], ARGV[2]
local limit, burst = tonumber(ARGV[3]), tonumber(ARGV[5])
if ARGV[4] ~= 'inf' then
  local rate = tonumber(ARGV[4])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < 1 then return {0, 'rate', 0} end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  -- Gone once it would be full again anyway.
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
local held = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do held = held + tonumber(n) end
if limit > 0 and held >= limit then return {0, 'connections', held} end
redis.call('HINCRBY', KEYS[1], gw, 1)
redis.call('SADD', KEYS[3], address)
return {1, held + 1}
