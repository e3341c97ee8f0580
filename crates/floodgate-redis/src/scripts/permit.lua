-- floodgate: operations on the permits in flight of (concurrency limit, key) pairs, many in
-- one call. They are applied in order, each exactly as if sent alone, one after another, at
-- the call's time: the same replies, the same sets, the same TTLs. With batching off a call
-- carries one operation.
--
-- KEYS      the permit sets of the call (on a Cluster, all in one slot), each a sorted set:
--           member = permit id (32 lowercase hex digits), score = the end of its lease in
--           microseconds on the decision clock. Absent means none in flight.
-- ARGV[1]   now in microseconds, or -1 to read the server's TIME (the normal case; an
--           explicit time is for tests that drive a manual clock: then the TTL, which runs
--           on Redis's own clock, is at least an hour)
-- then      five arguments per operation, to the end:
--             operation: 1 = acquire, 2 = release, 3 = renew
--             key: the 1-based index of its set in KEYS
--             the permit id: 32 lowercase hexadecimal digits
--             max in flight: an integer from 1 to 2^32 - 1
--             lease in microseconds: an integer from 1 to 2^40
--
-- Every operation first drops the permits of its set whose lease ended at or before now
-- (reclaiming the slots of holders that died). Then:
--   acquire: a permit already in flight under this id gets its lease renewed and counts as
--            granted (a retried acquire holds one permit); otherwise it is added if fewer
--            than max are in flight.
--   release: removes the id, if present.
--   renew:   sets the id's lease end to now + lease, if it is still in flight.
-- Reply: an array with one element per operation:
--        acquire { granted (0 or 1), in flight after, retry_after (microseconds until the
--                  earliest lease ends; 0 when granted), reclaimed }
--        release { 1, reclaimed }
--        renew   { renewed (0 or 1), reclaimed }
--        or its error reply: "floodgate: ..." for a bad argument or a stored value that is
--        not a sorted set; that operation changes nothing and the others are applied.
-- TTL: a set created by a call expires when its latest lease ends (rounded up to whole
-- milliseconds); a later write only ever moves its expiry later (PEXPIRE GT), so a live
-- permit always keeps its set and a set outlives its last permit by at most one lease.
-- A call whose shape is broken (the header, an operation's key index, the argument count)
-- is a client bug: the whole call is an error and writes nothing. Every argument is checked
-- before the first write; a set holding another type fails its operations alone (the first
-- operation's trim, which writes nothing to such a value, finds it).

local nkeys, nargs = #KEYS, #ARGV
local now = tonumber(ARGV[1])
if nkeys < 1 or nargs < 6 or (nargs - 1) % 5 ~= 0 then
  return redis.error_reply('floodgate: malformed permit call: expected a time and five arguments per operation')
end
if not now or now % 1 ~= 0 or (now < 0 and now ~= -1) or now > 4503599627370496 then
  return redis.error_reply('floodgate: now must be -1 or an integer from 0 to 2^52 microseconds')
end
local explicit = now >= 0

-- Every operation read and checked before the first write.
local ops, keyof, ids, maxes, leases, failed = {}, {}, {}, {}, {}, {}
local count = (nargs - 1) / 5
for i = 1, count do
  local at = 2 + 5 * (i - 1)
  local k = tonumber(ARGV[at + 1])
  if not k or k % 1 ~= 0 or k < 1 or k > nkeys then
    return redis.error_reply('floodgate: malformed permit call: operation ' .. i .. ' names no key')
  end
  local op, id = tonumber(ARGV[at]), ARGV[at + 2]
  local max, lease = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  ops[i], keyof[i], ids[i], maxes[i], leases[i] = op, k, id, max, lease
  if not (op == 1 or op == 2 or op == 3) then
    failed[i] = 'floodgate: operation must be 1, 2 or 3'
  elseif #id ~= 32 or string.find(id, '[^0-9a-f]') then
    failed[i] = 'floodgate: a permit id is 32 lowercase hexadecimal digits'
  elseif not max or max < 1 or max > 4294967295 or max % 1 ~= 0 then
    failed[i] = 'floodgate: max must be an integer from 1 to 2^32 - 1'
  elseif not lease or lease < 1 or lease > 1099511627776 or lease % 1 ~= 0 then
    failed[i] = 'floodgate: lease must be an integer from 1 to 2^40 microseconds'
  end
end
if not explicit then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- A set is trimmed, and its type checked, by the first operation on it: at the call's one
-- time, a later operation would find nothing more to drop (every lease it writes ends
-- after now). The trim writes nothing to a value of another type: it fails, and so does
-- every operation on that key, alone.
local trimmed, wrong = {}, {}
local function trim(k)
  if trimmed[k] then return 0 end
  trimmed[k] = true
  local removed = redis.pcall('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  if type(removed) == 'table' and removed.err then
    wrong[k] = 'floodgate: stored value at ' .. KEYS[k] .. ' is a ' ..
      redis.call('TYPE', KEYS[k]).ok .. ', not a permit set'
    return 0
  end
  return removed
end

-- TTLs, applied once per set at the end, as single calls would leave them: a set created
-- by this call gets the time until its latest lease ends; a set that already had one keeps
-- the later of its expiry and the lease ends written (PEXPIRE GT). So a live permit always
-- keeps its set, and a set outlives its last permit by at most one lease.
local ttl, created, touched = {}, {}, {}
local function keep(k, lease_end, fresh)
  local ms = math.ceil((lease_end - now) / 1000)
  if explicit and ms < 3600000 then
    ms = 3600000
  end
  if ms < 1 then ms = 1 end
  if not ttl[k] then
    touched[#touched + 1] = k
  elseif not fresh and ttl[k] > ms then
    ms = ttl[k]
  end
  ttl[k] = ms
  if fresh then created[k] = true end
end

local reply = {}
for i = 1, count do
  local k = keyof[i]
  local reclaimed = 0
  if not failed[i] then reclaimed = trim(k) end
  if failed[i] or wrong[k] then
    reply[i] = redis.error_reply(failed[i] or wrong[k])
  else
    local key, id, op = KEYS[k], ids[i], ops[i]
    if op == 1 then
      local n = redis.call('ZCARD', key)
      local lease_end = now + leases[i]
      if n < maxes[i] then
        -- Granted: a new id adds one; a retried id only moves its lease end.
        local added = redis.call('ZADD', key, lease_end, id)
        keep(k, lease_end, n == 0)
        reply[i] = { 1, n + added, 0, reclaimed }
      elseif redis.call('ZSCORE', key, id) then
        redis.call('ZADD', key, 'XX', lease_end, id)
        keep(k, lease_end, false)
        reply[i] = { 1, n, 0, reclaimed }
      else
        local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        reply[i] = { 0, n, tonumber(first[2]) - now, reclaimed }
      end
    elseif op == 2 then
      redis.call('ZREM', key, id)
      reply[i] = { 1, reclaimed }
    elseif not redis.call('ZSCORE', key, id) then
      reply[i] = { 0, reclaimed }
    else
      redis.call('ZADD', key, 'XX', now + leases[i], id)
      keep(k, now + leases[i], false)
      reply[i] = { 1, reclaimed }
    end
  end
end

for j = 1, #touched do
  local k = touched[j]
  if created[k] then
    redis.call('PEXPIRE', KEYS[k], ttl[k])
  else
    local moved = redis.pcall('PEXPIRE', KEYS[k], ttl[k], 'GT')
    if type(moved) == 'table' and moved.err then
      -- Before Redis 7.0 (no GT): the same rule, read and compared here.
      local left = redis.call('PTTL', KEYS[k])
      if left == -1 or (left >= 0 and left < ttl[k]) then
        redis.call('PEXPIRE', KEYS[k], ttl[k])
      end
    end
  end
end
return reply
