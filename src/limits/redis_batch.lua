-- tollgate: one batch of admissions, releases and spend changes, run whole (atomic) by Redis.
--
-- KEYS: the keys of every operation, in order, then the lease hash.
-- ARGV[1] this replica's id; ARGV[2] its lease (ms; 0: not refreshed in this batch); ARGV[3] the margin (ms) a
-- rate key lives past its TAT; ARGV[4] how long (ms) a slot hash lives after this replica's last change to it;
-- then the operations:
--   'a' now_us slots buckets, then each slot's maximum, then each bucket's interval and tolerance (us):
--       an admission; KEYS: its slot hashes, then its rate keys. Answers three numbers: 0 0 0 admitted,
--       1 index 0 a full slot, 2 index retry_after_us an empty bucket. Nothing is taken unless all admit.
--   'r' slots: a release of this replica's slots; KEYS: the slot hashes. Answers nothing.
--   's' keys delta, then each key's expiry (ms since the epoch): adds delta to every spend counter; answers the
--       new values.
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

-- key -> {total of live replicas, this replica's count, changed}
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
    held = {total, mine, false}
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

local out = {}
local a, k = 5, 1
while a <= #ARGV do
  local op = ARGV[a]
  if op == 'a' then
    local now = tonumber(ARGV[a + 1])
    local nslots = tonumber(ARGV[a + 2])
    local nbuckets = tonumber(ARGV[a + 3])
    a = a + 4
    local kind, index, retry = 0, 0, 0
    for i = 0, nslots - 1 do
      if slot(KEYS[k + i])[1] >= tonumber(ARGV[a + i]) then
        kind, index = 1, i
        break
      end
    end
    local new = {}
    if kind == 0 then
      for j = 0, nbuckets - 1 do
        local interval = tonumber(ARGV[a + nslots + 2 * j])
        local tolerance = tonumber(ARGV[a + nslots + 2 * j + 1])
        local new_tat = math.max(tat(KEYS[k + nslots + j])[1], now) + interval
        local allowed_until = now + tolerance
        if new_tat > allowed_until then
          kind, index, retry = 2, j, new_tat - allowed_until
          break
        end
        new[j] = new_tat
      end
    end
    if kind == 0 then
      for j = 0, nbuckets - 1 do
        local known = tats[KEYS[k + nslots + j]]
        known[1] = new[j]
        known[2] = now
      end
      for i = 0, nslots - 1 do
        local held = slots[KEYS[k + i]]
        held[1] = held[1] + 1
        held[2] = held[2] + 1
        held[3] = true
      end
    end
    out[#out + 1] = kind
    out[#out + 1] = index
    out[#out + 1] = retry
    a = a + nslots + 2 * nbuckets
    k = k + nslots + nbuckets
  elseif op == 'r' then
    local nslots = tonumber(ARGV[a + 1])
    a = a + 2
    for i = 0, nslots - 1 do
      local held = slot(KEYS[k + i])
      -- Never below zero: a release of slots whose field was already dropped gives nothing back.
      if held[2] > 0 then
        held[1] = held[1] - 1
        held[2] = held[2] - 1
        held[3] = true
      end
    end
    k = k + nslots
  elseif op == 's' then
    local nkeys = tonumber(ARGV[a + 1])
    local delta = ARGV[a + 2]
    a = a + 3
    for i = 0, nkeys - 1 do
      out[#out + 1] = redis.call('INCRBY', KEYS[k + i], delta)
      redis.call('PEXPIREAT', KEYS[k + i], ARGV[a + i])
    end
    a = a + nkeys
    k = k + nkeys
  else
    return redis.error_reply('tollgate: unknown batch operation ' .. tostring(op))
  end
end

for key, known in pairs(tats) do
  if known[2] ~= nil then
    local ttl_ms = math.ceil((known[1] - known[2]) / 1000) + margin
    redis.call('SET', key, string.format('%.0f', known[1]), 'PX', ttl_ms)
  end
end
for key, held in pairs(slots) do
  if held[3] then
    if held[2] > 0 then
      redis.call('HSET', key, me, held[2])
      redis.call('PEXPIRE', key, slot_ttl)
    else
      redis.call('HDEL', key, me)
    end
  end
end
return out
