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
--               explicit time is for tests that drive a manual clock: then TTLs, which run
--               on Redis's own clock, are at least an hour, so a bucket cannot expire while
--               the test's clock stands still)
-- ARGV[2+2i]    emission interval T of limit i, integer microseconds >= 1
-- ARGV[3+2i]    burst B of limit i, integer >= 1, with B * T <= 2^51
--
-- Reply: { allowed (0 or 1),
--          denied_by (0-based index of the limit with the longest wait; 0 when allowed),
--          retry_after (microseconds; for a charge in debt, until a cost-1 request passes;
--                       0 when allowed),
--          ahead_1, ..., ahead_n (microseconds each limit's TAT is ahead of now after this
--                       call, 0 when full) }
--        or, for an allowed decision on a single limit (the hot path), just the integer
--        ahead_1.
-- The caller derives the rest (tokens left, which limit decided an allowance, time until
-- full) from the aheads and the limits it sent. A denial writes nothing; an acquire or
-- charge writes every TAT with a TTL (PX) of the time until that bucket is full again,
-- rounded up to whole milliseconds, so no key outlives its meaning.
-- Errors: "floodgate: ..." replies for bad arguments or a stored value that is not a TAT,
-- all raised before the first write, so a failed call changes nothing.
--
-- Straight-line code with a single-limit fast path: this runs on Redis's only thread.

local MAX = 9007199254740992 -- 2^53: integers are exact below it
local n = #KEYS
if n < 1 or #ARGV ~= 3 + 2 * n then
  return redis.error_reply('floodgate: expected 3 + 2 * #KEYS arguments')
end
local op, cost, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not (op == 1 or op == 2 or op == 3)
  or not cost or cost % 1 ~= 0 or cost < 1 or cost > 4294967295
  or not now or now % 1 ~= 0 or now < -1 or now > MAX then
  return redis.error_reply('floodgate: bad operation, cost or time argument')
end
if op == 2 then cost = 1 end
-- The shortest TTL written, in milliseconds (see ARGV[3]).
local min_ttl = 1
if now >= 0 then min_ttl = 3600000 end

if n == 1 then
  local t, b = tonumber(ARGV[4]), tonumber(ARGV[5])
  if not t or not b or t % 1 ~= 0 or b % 1 ~= 0 or t < 1 or b < 1 or b > 4294967295
    or t * b > 2251799813685248 then
    return redis.error_reply('floodgate: bad limit argument for key ' .. KEYS[1])
  end
  local tolerance = t * b
  if now < 0 then
    local time = redis.call('TIME')
    now = time[1] * 1000000 + time[2]
  end
  local tat = 0
  local stored = redis.call('GET', KEYS[1])
  if stored then
    tat = tonumber(stored)
    if not tat or tat % 1 ~= 0 or tat < 0 or tat > MAX then
      return redis.error_reply('floodgate: corrupted state at key ' .. KEYS[1])
    end
  end
  local base = tat
  if base < now then base = now end
  local new = base + cost * t
  local wait = new - now - tolerance
  if op == 1 and wait <= 0 then
    -- The hot path: an admission. TTL: until the bucket is full again.
    local ms = math.ceil((new - now) / 1000)
    if ms < min_ttl then ms = min_ttl end
    redis.call('SET', KEYS[1], new, 'PX', ms)
    return new - now
  end
  if op == 3 then
    if new > now + 2 * tolerance then new = now + 2 * tolerance end
    local ms = math.ceil((new - now) / 1000)
    if ms < min_ttl then ms = min_ttl end
    redis.call('SET', KEYS[1], new, 'PX', ms)
    if wait <= 0 then return new - now end
    return { 0, 0, new + t - now - tolerance, new - now }
  end
  local ahead = tat - now
  if ahead < 0 then ahead = 0 end
  if wait > 0 then return { 0, 0, wait, ahead } end
  return ahead
end

local function ttl(ahead)
  local ms = math.ceil(ahead / 1000)
  if ms < min_ttl then return min_ttl end
  return ms
end

local function limit(i)
  local t, b = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if not t or not b or t % 1 ~= 0 or b % 1 ~= 0 or t < 1 or b < 1 or b > 4294967295
    or t * b > 2251799813685248 then
    return nil
  end
  return t, t * b
end

local function state(key)
  local stored = redis.call('GET', key)
  if not stored then return 0 end
  local v = tonumber(stored)
  if not v or v % 1 ~= 0 or v < 0 or v > MAX then return nil end
  return v
end

-- Several limits: all or nothing.
local interval, tolerance, tat = {}, {}, {}
for i = 1, n do
  interval[i], tolerance[i] = limit(i)
  if not interval[i] then return redis.error_reply('floodgate: bad limit argument for key ' .. KEYS[i]) end
end
if now < 0 then
  local time = redis.call('TIME')
  now = time[1] * 1000000 + time[2]
end
for i = 1, n do
  tat[i] = state(KEYS[i])
  if not tat[i] then return redis.error_reply('floodgate: corrupted state at key ' .. KEYS[i]) end
end

local after, allowed, worst, wait = {}, 1, 0, 0
for i = 1, n do
  local base = tat[i]
  if base < now then base = now end
  after[i] = base + cost * interval[i]
end
if op == 3 then
  for i = 1, n do
    if after[i] - now > tolerance[i] then allowed = 0 end
    if after[i] > now + 2 * tolerance[i] then after[i] = now + 2 * tolerance[i] end
  end
  if allowed == 0 then
    for i = 1, n do
      local w = after[i] + interval[i] - now - tolerance[i]
      if w > wait then worst, wait = i - 1, w end
    end
  end
else
  for i = 1, n do
    local w = after[i] - now - tolerance[i]
    if w > wait then allowed, worst, wait = 0, i - 1, w end
  end
  if allowed == 0 or op == 2 then after = tat end
end
if op ~= 2 and (allowed == 1 or op == 3) then
  for i = 1, n do
    redis.call('SET', KEYS[i], after[i], 'PX', ttl(after[i] - now))
  end
end
local reply = { allowed, worst, wait }
for i = 1, n do
  local ahead = after[i] - now
  if ahead < 0 then ahead = 0 end
  reply[3 + i] = ahead
end
return reply
