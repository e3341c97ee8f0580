-- floodgate: one decision on every limit of one (policy, key), atomically.
--
-- KEYS[i]       the state of limit i: its TAT ("theoretical arrival time"), an integer
--               string in microseconds on the decision clock. Absent means a full bucket.
--               All keys share one hash tag, so they live in one Cluster slot.
-- ARGV[1]       operation: 1 = acquire (check and consume, all or nothing),
--               2 = peek (cost 1, writes nothing), 3 = charge (consume without checking,
--               debt capped at one burst below empty)
-- ARGV[2]       cost: an integer from 1 to 2^32 - 1
-- ARGV[3]       now in microseconds, or -1 to read the server's TIME (the normal case; an
--               explicit time is for tests that drive a manual clock)
-- ARGV[2+2i]    emission interval T of limit i, integer microseconds >= 1
-- ARGV[3+2i]    burst B of limit i, integer >= 1, with B * T <= 2^51
--
-- Reply: { allowed (0 or 1), decided_by (0-based index of the deciding limit),
--          burst (B of that limit), left (microseconds of capacity left in it),
--          interval (T of it), retry_after (microseconds, 0 when allowed),
--          reset_after (microseconds until every limit is full),
--          ahead_1, ..., ahead_n (for each limit, how far its TAT is ahead of now after
--          this call, in microseconds, 0 when full: the whole state, for a local cache) }
-- Every write sets the new TAT with a TTL (PX) of the time until the bucket is full again,
-- rounded up to whole milliseconds, so no key outlives its meaning.
-- Errors: "floodgate: ..." replies for bad arguments or a stored value that is not a
-- TAT. All are raised before the first write, so a failed call changes nothing.

local function whole(value, low, high)
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) or n < low or n > high then
    return nil
  end
  return n
end

local MAX = 9007199254740992 -- 2^53: integers are exact below it
local count = #KEYS
local op = whole(ARGV[1], 1, 3)
local cost = whole(ARGV[2], 1, 4294967295)
local now = whole(ARGV[3], -1, MAX)
if count < 1 or #ARGV ~= 3 + 2 * count then
  return redis.error_reply('floodgate: expected 3 + 2 * #KEYS arguments')
end
if op == nil or cost == nil or now == nil then
  return redis.error_reply('floodgate: bad operation, cost or time argument')
end

local interval, burst, tolerance, tat = {}, {}, {}, {}
for i = 1, count do
  interval[i] = whole(ARGV[2 + 2 * i], 1, 2251799813685248)
  burst[i] = whole(ARGV[3 + 2 * i], 1, 4294967295)
  if interval[i] == nil or burst[i] == nil or interval[i] * burst[i] > 2251799813685248 then
    return redis.error_reply('floodgate: bad limit argument for key ' .. KEYS[i])
  end
  tolerance[i] = interval[i] * burst[i]
end

if now < 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

for i = 1, count do
  local stored = redis.call('GET', KEYS[i])
  if stored then
    tat[i] = whole(stored, 0, MAX)
    if tat[i] == nil then
      return redis.error_reply('floodgate: corrupted state at key ' .. KEYS[i])
    end
  else
    tat[i] = 0
  end
end

-- From here on, only arithmetic on validated integers and the writes.

local function left_of(i, t)
  local used = t - now
  if used < 0 then used = 0 end
  if used > tolerance[i] then return 0 end
  return tolerance[i] - used
end

-- The reply: the verdict, then every limit's state relative to now.
local function reply(verdict, tats)
  for i = 1, count do
    local ahead = tats[i] - now
    if ahead < 0 then ahead = 0 end
    verdict[7 + i] = ahead
  end
  return verdict
end

local function reset_after(tats)
  local longest = 0
  for i = 1, count do
    if tats[i] - now > longest then longest = tats[i] - now end
  end
  return longest
end

local function store(tats)
  for i = 1, count do
    local ttl = math.ceil((tats[i] - now) / 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', string.format('%.0f', ttl))
  end
end

-- An allowed reply: the deciding limit is the one with the fewest whole tokens left.
local function allowed(tats)
  local best, fewest = 1, nil
  for i = 1, count do
    local tokens = math.floor(left_of(i, tats[i]) / interval[i])
    if fewest == nil or tokens < fewest then
      best, fewest = i, tokens
    end
  end
  return reply({ 1, best - 1, burst[best], left_of(best, tats[best]), interval[best], 0, reset_after(tats) }, tats)
end

local function base(i)
  if tat[i] > now then return tat[i] end
  return now
end

if op == 3 then
  local fits = true
  local after = {}
  for i = 1, count do
    local new = base(i) + cost * interval[i]
    if new - now > tolerance[i] then fits = false end
    local cap = now + 2 * tolerance[i]
    if new > cap then new = cap end
    after[i] = new
  end
  store(after)
  if fits then return allowed(after) end
  local worst, longest = 1, 0
  for i = 1, count do
    local wait = after[i] + interval[i] - now - tolerance[i]
    if wait > longest then worst, longest = i, wait end
  end
  return reply({ 0, worst - 1, burst[worst], left_of(worst, after[worst]), interval[worst], longest, reset_after(after) }, after)
end

local want = cost
if op == 2 then want = 1 end
local worst, longest = nil, 0
local after = {}
for i = 1, count do
  after[i] = base(i) + want * interval[i]
  local wait = after[i] - now - tolerance[i]
  if wait > 0 and (worst == nil or wait > longest) then
    worst, longest = i, wait
  end
end
if worst ~= nil then
  return reply({ 0, worst - 1, burst[worst], left_of(worst, tat[worst]), interval[worst], longest, reset_after(tat) }, tat)
end
if op == 2 then return allowed(tat) end
store(after)
return allowed(after)
