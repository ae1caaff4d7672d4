"""The Redis server-side scripts: admission (every check of a request, one round trip) and
settlement (one round trip). Same algorithm as `memory.py`, documented in `store.py`.

Keys: a sliding window is a sorted set (request id -> admission time) plus a hash `<key>:a`
(request id -> amount, and `#` -> their total); a concurrency rule a sorted set (request id ->
lease expiry); a budget a number per period, `<key>:<period id>`. Every key carries a TTL:
windows expire a minute after their last entry, leases with their expiry, budgets a day after
their period ends, usage totals 400 days after their last update. Time is Redis's own clock
(`TIME`), so replicas whose clocks differ still share one window.
"""

from __future__ import annotations

_COMMON = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local WINDOW = 60000
local DAY = 86400000

local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function period(kind)
  local day = math.floor(now / DAY)
  local y, m, d = civil(day)
  if kind == 'd' then
    return string.format('%04d-%02d-%02d', y, m, d), (day + 1) * DAY
  end
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), days_from_civil(ny, nm, 1) * DAY
end

local function trim(key)
  local amounts = key .. ':a'
  local total = tonumber(redis.call('HGET', amounts, '#')) or 0
  local changed = false
  while true do
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', now - WINDOW, 'LIMIT', 0, 500)
    if #old == 0 then break end
    for _, v in ipairs(redis.call('HMGET', amounts, unpack(old))) do
      total = total - (tonumber(v) or 0)
    end
    redis.call('HDEL', amounts, unpack(old))
    redis.call('ZREM', key, unpack(old))
    changed = true
  end
  if changed then
    if redis.call('ZCARD', key) == 0 then
      total = 0
      redis.call('DEL', amounts)
    else
      redis.call('HSET', amounts, '#', total)
    end
  end
  return total
end

local function wait_for(key, total, amount, limit)
  if amount > limit then return WINDOW end
  local entries = redis.call('ZRANGE', key, 0, 999, 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + (tonumber(redis.call('HGET', key .. ':a', entries[i])) or 0)
    if total - freed + amount <= limit then
      return math.max(1, tonumber(entries[i + 1]) + WINDOW - now)
    end
  end
  return WINDOW
end

local function reset(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return math.max(0, tonumber(last[2]) + WINDOW - now)
end
"""

# KEYS: one per check. ARGV: request id, lease ms, peek (1: only report), then per check its
# code (r, t, c, bd, bm), limit and amount. Returns {admitted, denied index (1-based, 0: none),
# retry ms, then per check: used before this request, ms until whole, period id}.
ADMIT = (
    _COMMON
    + r"""
local rid = ARGV[1]
local lease = tonumber(ARGV[2])
local peek = ARGV[3] == '1'
local n = #KEYS
local used, resets, pids, ends = {}, {}, {}, {}
local denied, retry = 0, 0
for i = 1, n do
  local key = KEYS[i]
  local code = ARGV[4 + (i - 1) * 3]
  local limit = tonumber(ARGV[5 + (i - 1) * 3])
  local amount = tonumber(ARGV[6 + (i - 1) * 3])
  local u, fits, wait, rst, pid = 0, true, 0, 0, ''
  if code == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    u = redis.call('ZCARD', key)
    fits = u + 1 <= limit
    wait = 1000
  elseif code == 'bd' or code == 'bm' then
    local stop
    pid, stop = period(string.sub(code, 2))
    u = tonumber(redis.call('GET', key .. ':' .. pid)) or 0
    fits = u + amount <= limit
    wait = stop - now
    rst = wait
    ends[i] = stop
  else
    u = trim(key)
    fits = u + amount <= limit
    if not fits then wait = wait_for(key, u, amount, limit) end
    rst = reset(key)
  end
  used[i], resets[i], pids[i] = u, rst, pid
  if not fits and denied == 0 then
    denied, retry = i, wait
  end
end
local out = {0, denied, retry}
if denied == 0 and not peek then
  out[1] = 1
  for i = 1, n do
    local key = KEYS[i]
    local code = ARGV[4 + (i - 1) * 3]
    local amount = ARGV[6 + (i - 1) * 3]
    if code == 'c' then
      redis.call('ZADD', key, now + lease, rid)
      -- The key lives as long as its latest lease (leases differ with requests' timeouts).
      local latest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      redis.call('PEXPIREAT', key, tonumber(latest[2]))
    elseif code == 'bd' or code == 'bm' then
      local counter = key .. ':' .. pids[i]
      redis.call('INCRBYFLOAT', counter, amount)
      redis.call('PEXPIREAT', counter, ends[i] + DAY)
    else
      redis.call('ZADD', key, now, rid)
      redis.call('HSET', key .. ':a', rid, amount)
      redis.call('HINCRBYFLOAT', key .. ':a', '#', amount)
      redis.call('PEXPIRE', key, WINDOW)
      redis.call('PEXPIRE', key .. ':a', WINDOW)
      resets[i] = WINDOW
    end
  end
end
for i = 1, n do
  out[#out + 1] = tostring(used[i])
  out[#out + 1] = resets[i]
  out[#out + 1] = pids[i]
end
return out
"""
)

# KEYS: one per check, then one per usage increment. ARGV: request id, number of checks, then
# per check its code, reserved amount, final amount and period id, then per usage increment
# its field and increment.
SETTLE = r"""
local rid = ARGV[1]
local n = tonumber(ARGV[2])
for i = 1, n do
  local key = KEYS[i]
  local base = 3 + (i - 1) * 4
  local code = ARGV[base]
  local reserved = tonumber(ARGV[base + 1])
  local final = tonumber(ARGV[base + 2])
  local pid = ARGV[base + 3]
  if code == 't' then
    local before = redis.call('HGET', key .. ':a', rid)
    if before then
      redis.call('HSET', key .. ':a', rid, final)
      redis.call('HINCRBYFLOAT', key .. ':a', '#', final - tonumber(before))
    end
  elseif code == 'c' then
    redis.call('ZREM', key, rid)
  elseif code == 'bd' or code == 'bm' then
    local counter = key .. ':' .. pid
    if redis.call('EXISTS', counter) == 1 and final ~= reserved then
      redis.call('INCRBYFLOAT', counter, final - reserved)
    end
  end
end
local first = 3 + n * 4
for j = n + 1, #KEYS do
  local at = first + (j - n - 1) * 2
  redis.call('HINCRBYFLOAT', KEYS[j], ARGV[at], ARGV[at + 1])
  redis.call('EXPIRE', KEYS[j], 34560000)
end
return 1
"""
