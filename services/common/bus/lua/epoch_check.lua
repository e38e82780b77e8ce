-- epoch_check: start a new epoch when the data may have gone back in time.
--
-- KEYS[1] epoch                 Keys.epoch
-- KEYS[2] the epoch's source    Keys.epoch_source
--
-- Run by every gateway on each new command connection, before anything else
-- can use it.  The epoch records the replication id (INFO replication's
-- master_replid) of the primary it began on.  A restarted Redis and a promoted
-- replica both have a new replication id, and both may hold older data than
-- the gateways have seen (a replica that lagged, a restart from an older
-- snapshot): their first checker starts a new epoch, so room numbering that
-- restarts is never taken for duplicates.  The other gateways find the id
-- recorded and keep the epoch.  A new epoch is later than the old one on
-- Redis's clock, and at least one more than it whatever that clock says.
--
-- Returns the epoch in force.

local info = redis.call('INFO', 'replication')
local replid = string.match(info, 'master_replid:(%w+)') or ''
local e = redis.call('GET', KEYS[1])
if e and redis.call('GET', KEYS[2]) == replid then return e end
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
if e and tonumber(e) and tonumber(now) <= tonumber(e) then
  now = string.format('%.0f', tonumber(e) + 1)
end
redis.call('SET', KEYS[1], now)
redis.call('SET', KEYS[2], replid)
return now
