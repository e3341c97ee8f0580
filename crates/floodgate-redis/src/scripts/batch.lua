-- floodgate: many decisions in one call. They are decided in order, each exactly as
-- decide.lua decides it when sent alone, one after another, at the batch's time: the same
-- replies, the same stored TATs, the same TTLs. Keys and values are decide.lua's (layout
-- fg1), so single-call and batching clients share buckets.
--
-- KEYS          the keys of the batch: the keys of one (policy, key) are consecutive,
--               limit 0 first (on a Cluster, all in one slot)
-- ARGV[1]       now in microseconds, or -1 to read the server's TIME (see decide.lua)
-- ARGV[2]       s, the number of limit sets, >= 1
-- then s sets   n, then n pairs: emission interval T, burst B (decide.lua's ARGV[2+2i..])
-- then items    two integers each, to the end:
--                 op + 4 * cost        (op and cost as decide.lua's ARGV[1] and ARGV[2])
--                 1024 * key + set     (key: 1-based index of the item's limit 0 in KEYS;
--                                       set: 1-based index of its limit set, < 1024)
--               or, for a lease (op 0), three:
--                 4 * wanted, 1024 * key + set, least
--               A lease takes the same number of tokens, k, from every limit of its set:
--               as many as all of them can give now, at most `wanted`, and at least
--               `least` (1 to 2^32 - 1), all or nothing. Granted, its reply is
--               { 2, k, ahead_1, ..., ahead_n }; refused, it is the denial an acquire of
--               `least` would get.
--
-- Reply: an array with one element per item, what decide.lua would have replied to it:
-- its integer or array reply, or its error reply (a bad operation, cost or limit, or a
-- corrupted stored value: that item fails, the others are decided). A batch whose shape is
-- broken (the header, a set, an item's references) is a client bug: the whole call is an
-- error and writes nothing.
--
-- Every key is read once (MGET), before any write; each TAT changed is written once at the
-- end, with the TTL of its final value: what the last single call touching it would leave.
-- A single-limit item takes a path without tables: it is the hot path.

local MAX = 9007199254740992 -- 2^53: integers are exact below it
local nkeys, nargs = #KEYS, #ARGV
local now, nsets = tonumber(ARGV[1]), tonumber(ARGV[2])
local function malformed(what)
  return redis.error_reply('floodgate: malformed batch: ' .. what)
end
if not now or now % 1 ~= 0 or now < -1 or now > MAX
  or not nsets or nsets % 1 ~= 0 or nsets < 1 or nsets > 1023 then
  return malformed('header')
end

-- Limit sets: sizes, intervals, tolerances (T * B), and the first bad limit of each.
local size, interval, tolerance, bad = {}, {}, {}, {}
local pos = 3
for s = 1, nsets do
  local n = tonumber(ARGV[pos])
  if not n or n % 1 ~= 0 or n < 1 or pos + 2 * n > nargs then return malformed('limit set') end
  local ts, tols = {}, {}
  for i = 1, n do
    local t, b = tonumber(ARGV[pos + 2 * i - 1]), tonumber(ARGV[pos + 2 * i])
    if not t or not b or t % 1 ~= 0 or b % 1 ~= 0 or t < 1 or b < 1 or b > 4294967295
      or t * b > 2251799813685248 then
      if not bad[s] then bad[s] = i end
    else
      ts[i], tols[i] = t, t * b
    end
  end
  size[s], interval[s], tolerance[s] = n, ts, tols
  pos = pos + 1 + 2 * n
end
if pos + 1 > nargs then return malformed('items') end

local min_ttl = 1
if now >= 0 then
  min_ttl = 3600000
else
  local time = redis.call('TIME')
  now = time[1] * 1000000 + time[2]
end

-- Every key read up front (in chunks: unpack has a stack limit).
local stored = {}
for first = 1, nkeys, 1000 do
  local last = first + 999
  if last > nkeys then last = nkeys end
  local values = redis.call('MGET', unpack(KEYS, first, last))
  for i = 1, #values do stored[first + i - 1] = values[i] end
end
-- tats[name]: the TAT as decided so far, or false when the stored value is not a TAT.
local tats, written, order = {}, {}, {}
local function state(k)
  local name = KEYS[k]
  local v = tats[name]
  if v == nil then
    local raw = stored[k]
    if raw then
      v = tonumber(raw)
      if not v or v % 1 ~= 0 or v < 0 or v > MAX then v = false end
    else
      v = 0
    end
    tats[name] = v
  end
  return v
end
-- The TATs of the n keys from KEYS[k] on, or nil and the error naming a corrupted one.
local function states(k, n)
  local tat = {}
  for i = 1, n do
    tat[i] = state(k + i - 1)
    if not tat[i] then return nil, 'floodgate: corrupted state at key ' .. KEYS[k + i - 1] end
  end
  return tat
end
local function write(k, tat)
  local name = KEYS[k]
  tats[name] = tat
  if not written[name] then
    written[name] = true
    order[#order + 1] = name
  end
end

local reply = {}
local item = 0
while pos <= nargs do
  item = item + 1
  local w1, w2 = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  pos = pos + 2
  if not w1 or not w2 or w2 % 1 ~= 0 then return malformed('item ' .. item) end
  local least
  if w1 % 4 == 0 then
    least = tonumber(ARGV[pos])
    pos = pos + 1
    if not least then return malformed('item ' .. item) end
  end
  local s = w2 % 1024
  local k = (w2 - s) / 1024
  if s < 1 or s > nsets or k < 1 or k + size[s] - 1 > nkeys then
    return malformed('item ' .. item)
  end
  local op = w1 % 4
  local cost = (w1 - op) / 4
  local n = size[s]
  if w1 % 1 ~= 0 or cost < 1 or cost > 4294967295
    or (op == 0 and (least % 1 ~= 0 or least < 1 or least > 4294967295)) then
    reply[item] = redis.error_reply('floodgate: bad operation, cost or time argument')
  elseif bad[s] then
    reply[item] = redis.error_reply('floodgate: bad limit argument for key ' .. KEYS[k + bad[s] - 1])
  elseif op == 0 then
    -- A lease: up to `cost` (wanted) tokens from every limit, at least `least`.
    local tat, err = states(k, n)
    if err then
      reply[item] = redis.error_reply(err)
    else
      local ts, tols = interval[s], tolerance[s]
      local take = cost
      for i = 1, n do
        local base = tat[i]
        if base < now then base = now end
        local fits = math.floor((now + tols[i] - base) / ts[i])
        if fits < take then take = fits end
      end
      if take >= least then
        local r = { 2, take }
        for i = 1, n do
          local base = tat[i]
          if base < now then base = now end
          local after = base + take * ts[i]
          write(k + i - 1, after)
          r[2 + i] = after - now
        end
        reply[item] = r
      else
        local worst, wait = 0, 0
        for i = 1, n do
          local base = tat[i]
          if base < now then base = now end
          local w = base + least * ts[i] - now - tols[i]
          if w > wait then worst, wait = i - 1, w end
        end
        local r = { 0, worst, wait }
        for i = 1, n do
          local ahead = tat[i] - now
          if ahead < 0 then ahead = 0 end
          r[3 + i] = ahead
        end
        reply[item] = r
      end
    end
  elseif n == 1 then
    local tat = state(k)
    if not tat then
      reply[item] = redis.error_reply('floodgate: corrupted state at key ' .. KEYS[k])
    else
      if op == 2 then cost = 1 end
      local t, tol = interval[s][1], tolerance[s][1]
      local base = tat
      if base < now then base = now end
      local new = base + cost * t
      local wait = new - now - tol
      if op == 1 and wait <= 0 then
        write(k, new)
        reply[item] = new - now
      elseif op == 3 then
        if new > now + 2 * tol then new = now + 2 * tol end
        write(k, new)
        if wait <= 0 then
          reply[item] = new - now
        else
          reply[item] = { 0, 0, new + t - now - tol, new - now }
        end
      else
        local ahead = tat - now
        if ahead < 0 then ahead = 0 end
        if wait > 0 then reply[item] = { 0, 0, wait, ahead } else reply[item] = ahead end
      end
    end
  else
    local tat, err = states(k, n)
    if err then
      reply[item] = redis.error_reply(err)
    else
      if op == 2 then cost = 1 end
      local ts, tols = interval[s], tolerance[s]
      local after, allowed, worst, wait = {}, 1, 0, 0
      for i = 1, n do
        local base = tat[i]
        if base < now then base = now end
        after[i] = base + cost * ts[i]
      end
      if op == 3 then
        for i = 1, n do
          if after[i] - now > tols[i] then allowed = 0 end
          if after[i] > now + 2 * tols[i] then after[i] = now + 2 * tols[i] end
        end
        if allowed == 0 then
          for i = 1, n do
            local w = after[i] + ts[i] - now - tols[i]
            if w > wait then worst, wait = i - 1, w end
          end
        end
      else
        for i = 1, n do
          local w = after[i] - now - tols[i]
          if w > wait then allowed, worst, wait = 0, i - 1, w end
        end
        if allowed == 0 or op == 2 then after = tat end
      end
      if op ~= 2 and (allowed == 1 or op == 3) then
        for i = 1, n do write(k + i - 1, after[i]) end
      end
      local r = { allowed, worst, wait }
      for i = 1, n do
        local ahead = after[i] - now
        if ahead < 0 then ahead = 0 end
        r[3 + i] = ahead
      end
      reply[item] = r
    end
  end
end

-- Integers formatted here ('%d' is exact below 2^53 and gives the digits decide.lua's
-- numbers are stored as): cheaper than Redis formatting a number argument as a double.
local format = string.format
for i = 1, #order do
  local name = order[i]
  local tat = tats[name]
  local ms = math.ceil((tat - now) / 1000)
  if ms < min_ttl then ms = min_ttl end
  redis.call('SET', name, format('%d', tat), 'PX', format('%d', ms))
end
return reply
