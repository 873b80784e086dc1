-- tollgate: one batch of admissions, releases and spend changes, run whole (atomic) by Redis.
--
-- KEYS: the keys of every plan and spend operation, in order, then the lease hash.
-- ARGV[1] this replica's id; ARGV[2] its lease (ms; 0: not refreshed in this batch); ARGV[3] the margin (ms) a
-- rate key lives past its TAT; ARGV[4] how long (ms) a slot hash lives after this replica's last change to it;
-- ARGV[5] how long (ms) a settle marker lives; ARGV[6] the batch's base time (us): admissions carry their time as
-- an offset from it (a short number to parse); then the operations:
--   'p' slots buckets, then each slot's maximum, then each bucket's interval and tolerance (us): defines the next
--       plan (numbered from 1 in each batch); KEYS: its slot hashes, then its rate keys. Answers nothing.
--   'a' plan count, then count offsets: count admissions of the plan, in order, each at base + offset (us). Answers
--       per admission 0 (admitted), 1 index (a full slot) or 2 index retry_after_us (an empty bucket). Nothing is
--       taken unless all admit.
--   'r' plan count: count releases of this replica's slots of the plan. Answers nothing.
--   'c' plan tokens slots offset: a credit at base + offset (us): takes `tokens` requests from every bucket of the
--       plan and `slots` slots in every capped key, all or nothing, and only while each limit stays at most half
--       used after it (a slot total at most half its maximum, a bucket's TAT at most half its burst ahead).
--       Answers 1 (taken) or 0 (nothing taken).
--   'u' plan tokens: gives `tokens` unused requests back to every bucket of the plan (its TAT goes back by as many
--       intervals). Answers nothing.
--   'm': the next key is a settle marker: the spend operations marked 1 after it (until the next 'm') are added
--       only if the marker is new, so a settle sent again after a lost answer counts once. Answers nothing.
--   's' keys delta marked, then each key's expiry (ms since the epoch): adds delta to every spend counter (if
--       marked, only when the last marker was new); answers the counters' values.
--
-- A rate key holds the GCRA theoretical arrival time (us), exactly as gcra::step computes it. A slot hash holds
-- one field per replica, its count of held slots; a field counts only while its replica's lease (a field of the
-- lease hash: expiry in ms, by the server's clock) has not expired, and the field of a replica whose lease has
-- expired is deleted when seen. Every key is read once and written once per batch, however many operations
-- touch it. Lua numbers are doubles: exact for integers below 2^53.
local me = ARGV[1]
local leases = KEYS[#KEYS]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
if lease_ms > 0 then
  redis.call('HSET', leases, me, now_ms + lease_ms)
end
local margin = tonumber(ARGV[3])
local slot_ttl = tonumber(ARGV[4])
local marker_ttl = tonumber(ARGV[5])
local base = tonumber(ARGV[6])

local alive = nil
local function live()
  if alive == nil then
    alive = {}
    local all = redis.call('HGETALL', leases)
    for i = 1, #all, 2 do
      if tonumber(all[i + 1]) > now_ms then
        alive[all[i]] = true
      else
        redis.call('HDEL', leases, all[i])
      end
    end
    alive[me] = true
  end
  return alive
end

-- key -> {total of live replicas, this replica's count, changed, this replica's count before}
local slots = {}
local function slot(key)
  local held = slots[key]
  if held == nil then
    local replicas = live()
    local total, mine = 0, 0
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local count = tonumber(fields[i + 1]) or 0
      if fields[i] == me then
        mine = count
        total = total + count
      elseif replicas[fields[i]] then
        total = total + count
      else
        redis.call('HDEL', key, fields[i])
      end
    end
    held = {total, mine, false, mine}
    slots[key] = held
  end
  return held
end

-- key -> {tat, now of the admission that set it (nil: unchanged)}
local tats = {}
local function tat(key)
  local known = tats[key]
  if known == nil then
    known = {tonumber(redis.call('GET', key) or '0') or 0, nil}
    tats[key] = known
  end
  return known
end

-- plan number -> {slot keys, maxima, rate keys, intervals, tolerances}
local plans = {}
local out = {}
local fresh = true
local a, k = 7, 1
while a <= #ARGV do
  local op = ARGV[a]
  if op == 'a' then
    local plan = plans[tonumber(ARGV[a + 1])]
    local count = tonumber(ARGV[a + 2])
    local slot_keys, maxima, rate_keys, intervals, tolerances = plan[1], plan[2], plan[3], plan[4], plan[5]
    for n = 1, count do
      local now = base + tonumber(ARGV[a + 2 + n])
      local kind, index, retry = 0, 0, 0
      for i = 1, #slot_keys do
        if slot(slot_keys[i])[1] >= maxima[i] then
          kind, index = 1, i - 1
          break
        end
      end
      local new = {}
      if kind == 0 then
        for j = 1, #rate_keys do
          local new_tat = math.max(tat(rate_keys[j])[1], now) + intervals[j]
          local allowed_until = now + tolerances[j]
          if new_tat > allowed_until then
            kind, index, retry = 2, j - 1, new_tat - allowed_until
            break
          end
          new[j] = new_tat
        end
      end
      if kind == 0 then
        for j = 1, #rate_keys do
          local known = tats[rate_keys[j]]
          known[1] = new[j]
          known[2] = now
        end
        for i = 1, #slot_keys do
          local held = slots[slot_keys[i]]
          held[1] = held[1] + 1
          held[2] = held[2] + 1
          held[3] = true
        end
        out[#out + 1] = 0
      elseif kind == 1 then
        out[#out + 1] = 1
        out[#out + 1] = index
      else
        out[#out + 1] = 2
        out[#out + 1] = index
        out[#out + 1] = retry
      end
    end
    a = a + 3 + count
  elseif op == 'r' then
    local slot_keys = plans[tonumber(ARGV[a + 1])][1]
    local count = tonumber(ARGV[a + 2])
    a = a + 3
    for i = 1, #slot_keys do
      local held = slot(slot_keys[i])
      -- Never below zero: a release of slots whose field was already dropped gives nothing back.
      local given = math.min(count, held[2])
      if given > 0 then
        held[1] = held[1] - given
        held[2] = held[2] - given
        held[3] = true
      end
    end
  elseif op == 'c' then
    local plan = plans[tonumber(ARGV[a + 1])]
    local tokens = tonumber(ARGV[a + 2])
    local wanted = tonumber(ARGV[a + 3])
    local now = base + tonumber(ARGV[a + 4])
    a = a + 5
    local slot_keys, maxima, rate_keys, intervals, tolerances = plan[1], plan[2], plan[3], plan[4], plan[5]
    local lent = true
    if wanted > 0 then
      for i = 1, #slot_keys do
        if slot(slot_keys[i])[1] + wanted > math.floor(maxima[i] / 2) then
          lent = false
          break
        end
      end
    end
    local new = {}
    if lent and tokens > 0 then
      for j = 1, #rate_keys do
        local new_tat = math.max(tat(rate_keys[j])[1], now) + intervals[j] * tokens
        if new_tat > now + math.floor(tolerances[j] / 2) then
          lent = false
          break
        end
        new[j] = new_tat
      end
    end
    if lent then
      if tokens > 0 then
        for j = 1, #rate_keys do
          local known = tats[rate_keys[j]]
          known[1] = new[j]
          known[2] = now
        end
      end
      if wanted > 0 then
        for i = 1, #slot_keys do
          local held = slots[slot_keys[i]]
          held[1] = held[1] + wanted
          held[2] = held[2] + wanted
          held[3] = true
        end
      end
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  elseif op == 'u' then
    local plan = plans[tonumber(ARGV[a + 1])]
    local tokens = tonumber(ARGV[a + 2])
    a = a + 3
    local rate_keys, intervals = plan[3], plan[4]
    for j = 1, #rate_keys do
      local known = tat(rate_keys[j])
      known[1] = math.max(0, known[1] - intervals[j] * tokens)
      if known[2] == nil then
        known[2] = now_ms * 1000
      end
    end
  elseif op == 'p' then
    local nslots = tonumber(ARGV[a + 1])
    local nbuckets = tonumber(ARGV[a + 2])
    a = a + 3
    local slot_keys, maxima, rate_keys, intervals, tolerances = {}, {}, {}, {}, {}
    for i = 1, nslots do
      slot_keys[i] = KEYS[k]
      maxima[i] = tonumber(ARGV[a])
      k = k + 1
      a = a + 1
    end
    for j = 1, nbuckets do
      rate_keys[j] = KEYS[k]
      intervals[j] = tonumber(ARGV[a])
      tolerances[j] = tonumber(ARGV[a + 1])
      k = k + 1
      a = a + 2
    end
    plans[#plans + 1] = {slot_keys, maxima, rate_keys, intervals, tolerances}
  elseif op == 'm' then
    fresh = redis.call('SET', KEYS[k], '1', 'PX', marker_ttl, 'NX') ~= false
    k = k + 1
    a = a + 1
  elseif op == 's' then
    local nkeys = tonumber(ARGV[a + 1])
    local delta = ARGV[a + 2]
    local apply = ARGV[a + 3] == '0' or fresh
    a = a + 4
    for i = 0, nkeys - 1 do
      if apply then
        out[#out + 1] = redis.call('INCRBY', KEYS[k + i], delta)
        redis.call('PEXPIREAT', KEYS[k + i], ARGV[a + i])
      else
        out[#out + 1] = tonumber(redis.call('GET', KEYS[k + i]) or '0') or 0
      end
    end
    a = a + nkeys
    k = k + nkeys
  else
    return redis.error_reply('tollgate: unknown batch operation ' .. tostring(op))
  end
end

for key, known in pairs(tats) do
  if known[2] ~= nil then
    local ttl_ms = math.max(1, math.ceil((known[1] - known[2]) / 1000) + margin)
    redis.call('SET', key, string.format('%.0f', known[1]), 'PX', ttl_ms)
  end
end
for key, held in pairs(slots) do
  if held[3] then
    if held[2] > 0 then
      redis.call('HSET', key, me, held[2])
      -- The backstop TTL is refreshed with the lease (a few times a second), and when this replica first holds
      -- a slot of the key; not on every batch.
      if lease_ms > 0 or held[4] == 0 then
        redis.call('PEXPIRE', key, slot_ttl)
      end
    else
      redis.call('HDEL', key, me)
    end
  end
end
return out
