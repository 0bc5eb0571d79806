-- Portcullis rate-limit decision: the arithmetic of algorithm.rs, on Redis server time.
-- KEYS[i]: the state key of limit i ("a b c").
-- ARGV: five numbers per key: algorithm (1 sliding, 2 gcra, 3 fixed), limit, window_us,
--       burst, cost.
-- Returns four integers per key: allowed (1/0), remaining, reset_us, retry_after_us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor, max = math.floor, math.max

local function state(key)
  local s = redis.call('GET', key)
  if s then
    local a, b, c = string.match(s, '^(%d+) (%d+) (%d+)$')
    if a then return tonumber(a), tonumber(b), tonumber(c) end
  end
  return 0, 0, 0
end

local function eval(alg, limit, w, burst, cost, a, b, c)
  if alg == 1 then
    local idx = floor(now / w)
    local elapsed = now - idx * w
    local curr, prev = 0, 0
    if a == idx then curr, prev = b, c elseif a + 1 == idx then curr, prev = 0, b end
    local prev_w = prev * (w - elapsed)
    local cap = limit * w
    local allowed = prev_w + (curr + cost) * w <= cap
    local after = curr
    if allowed then after = curr + cost end
    local remaining = floor(max(0, cap - (prev_w + after * w)) / w)
    local to_end = w - elapsed
    -- When a request of cost fits, counting cur in this window (algorithm.rs's `wait`).
    local function wait(cur, cost)
      if cur + cost <= limit and prev > 0 then
        return max(0, (w - elapsed) - floor((limit - cur - cost) * w / prev))
      elseif cost <= limit then
        local e = 0
        if cur > 0 then e = max(0, w - floor((limit - cost) * w / cur)) end
        return to_end + e
      else
        return 2 * w
      end
    end
    local retry = 0
    if not allowed then retry = max(wait(curr, cost), 1) end
    local reset = 0
    if remaining == 0 then
      reset = max(wait(after, 1), 1)
    elseif after > 0 or prev > 0 then
      reset = to_end
    end
    return allowed, remaining, reset, retry, idx, after, prev, (idx + 2) * w
  elseif alg == 2 then
    local ti = max(floor(w / limit), 1)
    local bb = burst
    if bb == 0 then bb = limit end
    local tol = ti * bb
    local tat = max(a, now)
    local new_tat = tat + ti * cost
    local allowed = new_tat - now <= tol
    local after = tat
    if allowed then after = new_tat end
    local remaining = floor(max(0, tol - (after - now)) / ti)
    local retry = 0
    if not allowed then
      if cost > bb then retry = 2 * w else retry = max(new_tat - tol - now, 1) end
    end
    return allowed, remaining, after - now, retry, new_tat, 0, 0, new_tat
  else
    local idx = floor(now / w)
    local to_end = w - (now - idx * w)
    local count = 0
    if a == idx then count = b end
    local allowed = count + cost <= limit
    local after = count
    if allowed then after = count + cost end
    local retry = 0
    if not allowed then
      if cost > limit then retry = 2 * w else retry = to_end end
    end
    return allowed, max(0, limit - after), to_end, retry, idx, after, 0, (idx + 1) * w
  end
end

local n = #KEYS
local out, news, args, cells = {}, {}, {}, {}
local all = true
for i = 1, n do
  local k = (i - 1) * 5
  local p = { tonumber(ARGV[k + 1]), tonumber(ARGV[k + 2]), tonumber(ARGV[k + 3]),
              tonumber(ARGV[k + 4]), tonumber(ARGV[k + 5]) }
  local a, b, c = state(KEYS[i])
  local ok, rem, reset, retry, na, nb, nc, exp = eval(p[1], p[2], p[3], p[4], p[5], a, b, c)
  args[i] = p
  cells[i] = { a, b, c }
  news[i] = { na, nb, nc, exp }
  out[i] = { ok, rem, reset, retry }
  if not ok then all = false end
end
local flat = {}
for i = 1, n do
  local r = out[i]
  if all then
    local nw = news[i]
    local ttl = max(floor((nw[4] - now) / 1000) + 1000, 1000)
    redis.call('SET', KEYS[i], string.format('%.0f %.0f %.0f', nw[1], nw[2], nw[3]), 'PX', ttl)
  elseif r[1] then
    -- Nothing is charged: report this limit as it stands.
    local p, cl = args[i], cells[i]
    local ok, rem, reset, retry = eval(p[1], p[2], p[3], p[4], 0, cl[1], cl[2], cl[3])
    r = { ok, rem, reset, retry }
  end
  local allowed = 0
  if r[1] then allowed = 1 end
  flat[#flat + 1] = allowed
  flat[#flat + 1] = r[2]
  flat[#flat + 1] = r[3]
  flat[#flat + 1] = r[4]
end
return flat
