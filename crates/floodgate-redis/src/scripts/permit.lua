-- floodgate: one operation on the permits in flight of one (concurrency limit, key).
--
-- KEYS[1]   a sorted set: member = permit id (32 lowercase hex digits), score = the end of
--           its lease in microseconds on the decision clock. Absent means none in flight.
-- ARGV[1]   operation: 1 = acquire, 2 = release, 3 = renew
-- ARGV[2]   the permit id: 32 lowercase hexadecimal digits
-- ARGV[3]   max in flight: an integer from 1 to 2^32 - 1
-- ARGV[4]   lease in microseconds: an integer from 1 to 2^40
-- ARGV[5]   now in microseconds, or -1 to read the server's TIME (the normal case; an
--           explicit time is for tests that drive a manual clock: then the TTL, which runs
--           on Redis's own clock, is at least an hour)
--
-- Every operation first drops the permits whose lease ended at or before now (reclaiming
-- the slots of holders that died). Then:
--   acquire: a permit already in flight under this id gets its lease renewed and counts as
--            granted (a retried acquire holds one permit); otherwise it is added if fewer
--            than max are in flight.
--   release: removes the id, if present.
--   renew:   sets the id's lease end to now + lease, if it is still in flight.
-- Reply: acquire { granted (0 or 1), in flight after, retry_after (microseconds until the
--                  earliest lease ends; 0 when granted), reclaimed }
--        release { 1, reclaimed }
--        renew   { renewed (0 or 1), reclaimed }
-- After a write the key's TTL (PEXPIRE) is the time until its latest lease ends, rounded up
-- to whole milliseconds, so the set never outlives its permits and a live permit always
-- keeps it.
-- Errors: "floodgate: ..." replies for bad arguments or a stored value that is not a sorted
-- set, raised before the first write, so a failed call changes nothing.

if #KEYS ~= 1 or #ARGV ~= 5 then
  return redis.error_reply('floodgate: expected 1 key and 5 arguments')
end
local key = KEYS[1]
local op, id = tonumber(ARGV[1]), ARGV[2]
local max, lease, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not (op == 1 or op == 2 or op == 3) then
  return redis.error_reply('floodgate: operation must be 1, 2 or 3')
end
if #id ~= 32 or string.find(id, '[^0-9a-f]') then
  return redis.error_reply('floodgate: a permit id is 32 lowercase hexadecimal digits')
end
if not max or max < 1 or max > 4294967295 or max % 1 ~= 0 then
  return redis.error_reply('floodgate: max must be an integer from 1 to 2^32 - 1')
end
if not lease or lease < 1 or lease > 1099511627776 or lease % 1 ~= 0 then
  return redis.error_reply('floodgate: lease must be an integer from 1 to 2^40 microseconds')
end
if not now or now % 1 ~= 0 or (now < 0 and now ~= -1) or now > 4503599627370496 then
  return redis.error_reply('floodgate: now must be -1 or an integer from 0 to 2^52 microseconds')
end
local explicit = now >= 0
if not explicit then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local kind = redis.call('TYPE', key).ok
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('floodgate: stored value at ' .. key .. ' is a ' .. kind ..
    ', not a permit set')
end

local reclaimed = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)

-- The TTL after a write: until the latest lease ends (at least an hour on a manual clock).
local function keep()
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local ms = math.ceil((tonumber(last[2]) - now) / 1000)
  if explicit and ms < 3600000 then
    ms = 3600000
  end
  redis.call('PEXPIRE', key, math.max(ms, 1))
end

if op == 1 then
  local held = redis.call('ZSCORE', key, id)
  local count = redis.call('ZCARD', key)
  if not held then
    if count >= max then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      return { 0, count, tonumber(first[2]) - now, reclaimed }
    end
    count = count + 1
  end
  redis.call('ZADD', key, now + lease, id)
  keep()
  return { 1, count, 0, reclaimed }
elseif op == 2 then
  redis.call('ZREM', key, id)
  return { 1, reclaimed }
else
  if not redis.call('ZSCORE', key, id) then
    return { 0, reclaimed }
  end
  redis.call('ZADD', key, 'XX', now + lease, id)
  keep()
  return { 1, reclaimed }
end
