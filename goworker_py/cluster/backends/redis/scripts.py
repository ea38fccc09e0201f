"""The Lua scripts of the Redis backend: each is one atomic step, one round trip.

Every script takes the service's key prefix (``<namespace>:<service>:``) as ``ARGV[1]`` and
builds its key names from it (the layout is in :mod:`.backend`), which a standalone Redis
server (or a Sentinel-managed primary) allows; Redis Cluster is not supported. Scripts that
change what other instances look at end with ``notify(kind)``: the
service's change counter ``seq`` is incremented and ``"<seq> <kind>"`` published on the
service's ``changes`` channel, so a listener that lost messages can tell (see ``TICK``). A
release names its shards (``claims:3,7``): only an instance waiting for one of them cares.

A script never decides expiry by a clock of its own: keys expire by their Redis TTL, and a
script only asks ``PTTL``/``EXISTS``. The one clock read, ``TIME`` in ``CLAIM``, only floors the
fencing token (see the module docstring of the backend).
"""

from __future__ import annotations

_NOTIFY = """
local p = ARGV[1]
local function notify(kind)
  local seq = redis.call('INCR', p .. 'seq')
  redis.call('PUBLISH', p .. 'changes', seq .. ' ' .. kind)
end
"""

#: A new lease: ``ARGV = prefix, lease, ttl_ms, holder`` -> 1 (0 if the id exists: never reused).
LEASE = """
local lk = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('EXISTS', lk) == 1 then return 0 end
redis.call('HSET', lk, 'holder', ARGV[4])
redis.call('PEXPIRE', lk, ARGV[3])
return 1
"""

#: The periodic refresh and expiry poll:
#: ``ARGV = prefix, lease ('' for none), ttl_ms, seq keys...`` ->
#: ``{status, ms until the next expiry to look for, why, seq values...}`` where status is 1
#: (refreshed), 0 (no lease) or -1 (lost: the lease key is gone, or one of its claims is).
#: Refreshes only what still exists and is still this lease's: never re-creates a key.
TICK = (
    _NOTIFY
    + """
local lease, ttl = ARGV[2], tonumber(ARGV[3])
local status, why = 0, ''
local pruned_members, pruned_claims = 0, {}
if lease ~= '' then
  local lk = p .. 'lease:' .. lease
  local held = redis.call('HGETALL', lk)
  if #held == 0 then
    status, why = -1, 'the lease expired'
  else
    local broken = false
    for i = 1, #held, 2 do
      if string.sub(held[i], 1, 1) == 'c' then
        if redis.call('GET', p .. 'claim:' .. string.sub(held[i], 2)) ~= held[i + 1] then
          broken = string.sub(held[i], 2)
        end
      end
    end
    if broken then
      -- A claim vanished while its lease lived (a failover that lost it, a manual DEL): give
      -- the whole lease up, so that its holder stops every run at once.
      for i = 1, #held, 2 do
        if string.sub(held[i], 1, 1) == 'c' then
          local shard = string.sub(held[i], 2)
          if redis.call('GET', p .. 'claim:' .. shard) == held[i + 1] then
            redis.call('DEL', p .. 'claim:' .. shard)
            redis.call('SREM', p .. 'claims', shard)
            pruned_claims[#pruned_claims + 1] = shard
          end
        end
      end
      redis.call('DEL', lk, p .. 'member:' .. lease)
      pruned_members = pruned_members + redis.call('ZREM', p .. 'members', lease)
      status, why = -1, 'the claim of shard ' .. broken .. ' vanished'
    else
      redis.call('PEXPIRE', lk, ttl)
      redis.call('PEXPIRE', p .. 'member:' .. lease, ttl)
      for i = 1, #held, 2 do
        if string.sub(held[i], 1, 1) == 'c' then
          redis.call('PEXPIRE', p .. 'claim:' .. string.sub(held[i], 2), ttl)
        end
      end
      status = 1
    end
  end
end
-- Other leases' expiries: prune the indexes (publishing what vanished), and report when the
-- next key is due to expire, so that the caller looks again right then.
local next_expiry = ttl
for _, other in ipairs(redis.call('ZRANGE', p .. 'members', 0, -1)) do
  local left = redis.call('PTTL', p .. 'member:' .. other)
  if left == -2 then
    redis.call('ZREM', p .. 'members', other)
    pruned_members = pruned_members + 1
  elseif left >= 0 and left < next_expiry then
    next_expiry = left
  end
end
for _, shard in ipairs(redis.call('SMEMBERS', p .. 'claims')) do
  local left = redis.call('PTTL', p .. 'claim:' .. shard)
  if left == -2 then
    redis.call('SREM', p .. 'claims', shard)
    pruned_claims[#pruned_claims + 1] = shard
  elseif left >= 0 and left < next_expiry then
    next_expiry = left
  end
end
if pruned_members > 0 then notify('members') end
if #pruned_claims > 0 then notify('claims:' .. table.concat(pruned_claims, ',')) end
local out = {status, next_expiry, why}
for i = 4, #ARGV do
  out[#out + 1] = tonumber(redis.call('GET', ARGV[i]) or '0') or 0
end
return out
"""
)

#: ``ARGV = prefix, lease, instance JSON`` -> ``{1, rank}``, or ``{-1}`` when the lease is gone.
#: Idempotent: a retried call finds the member key and keeps its rank.
REGISTER = (
    _NOTIFY
    + """
local lease = ARGV[2]
local left = redis.call('PTTL', p .. 'lease:' .. lease)
if left <= 0 then return {-1} end
local mk = p .. 'member:' .. lease
local rank = redis.call('ZSCORE', p .. 'members', lease)
if rank and redis.call('EXISTS', mk) == 1 then
  rank = tonumber(rank)
else
  rank = redis.call('INCR', p .. 'members:rank')
  redis.call('ZADD', p .. 'members', rank, lease)
end
redis.call('SET', mk, ARGV[3], 'PX', left)
notify('members')
return {1, rank}
"""
)

#: ``ARGV = prefix, lease, instance JSON`` -> 1 (written), 0 (no member key), -1 (no lease).
PUBLISH = (
    _NOTIFY
    + """
local lease = ARGV[2]
local left = redis.call('PTTL', p .. 'lease:' .. lease)
if left <= 0 then return -1 end
local mk = p .. 'member:' .. lease
if redis.call('EXISTS', mk) == 0 then return 0 end
redis.call('SET', mk, ARGV[3], 'PX', left)
notify('members')
return 1
"""
)

#: ``ARGV = prefix, lease`` -> 1 if a member key was deleted.
UNREGISTER = (
    _NOTIFY
    + """
local removed = redis.call('DEL', p .. 'member:' .. ARGV[2])
removed = removed + redis.call('ZREM', p .. 'members', ARGV[2])
if removed > 0 then notify('members') end
return removed > 0 and 1 or 0
"""
)

#: Live members in rank order: ``ARGV = prefix`` -> ``{lease, rank, instance JSON, ...}``.
MEMBERS = """
local p = ARGV[1]
local out = {}
local entries = redis.call('ZRANGE', p .. 'members', 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local value = redis.call('GET', p .. 'member:' .. entries[i])
  if value then
    out[#out + 1] = entries[i]
    out[#out + 1] = entries[i + 1]
    out[#out + 1] = value
  end
end
return out
"""

#: ``ARGV = prefix, lease, shard, owner`` -> ``{1, claim value}`` (taken, or already ours: a
#: retried call), ``{0}`` (someone holds it), ``{-1}`` (the lease is gone) or ``{-2}`` (the lease
#: has no member key: a claim only ever belongs to a registered instance). The claim expires
#: with the lease (same PTTL) and is refreshed with it. Its fencing token is
#: ``max(counter + 1, last run record's token + 1, server time in µs)``.
CLAIM = """
local p, lease, shard, owner = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lk = p .. 'lease:' .. lease
local left = redis.call('PTTL', lk)
if left <= 0 then return {-1} end
if redis.call('EXISTS', p .. 'member:' .. lease) == 0 then return {-2} end
local ck = p .. 'claim:' .. shard
local current = redis.call('GET', ck)
if current then
  if redis.call('HGET', lk, 'c' .. shard) == current then return {1, current} end
  return {0}
end
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tk = p .. 'claims:' .. shard .. ':token'
local last = tonumber(redis.call('GET', tk) or '0') or 0
if last + 1 > token then token = last + 1 end
local record = redis.call('GET', p .. 'run:' .. shard)
if record then
  local ok, data = pcall(cjson.decode, record)
  if ok and type(data) == 'table' and tonumber(data.token) then
    if tonumber(data.token) + 1 > token then token = tonumber(data.token) + 1 end
  end
end
local digits = string.format('%.0f', token)
redis.call('SET', tk, digits)
local value = '{"owner":' .. cjson.encode(owner) .. ',"lease":"' .. lease .. '","token":'
  .. digits .. '}'
redis.call('SET', ck, value, 'PX', left)
redis.call('HSET', lk, 'c' .. shard, value)
redis.call('SADD', p .. 'claims', shard)
return {1, value}
"""

#: ``ARGV = prefix, lease, shard, claim value`` -> 1 if exactly this claim was deleted.
RELEASE = (
    _NOTIFY
    + """
local lk, shard, value = p .. 'lease:' .. ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', lk, 'c' .. shard) == value then redis.call('HDEL', lk, 'c' .. shard) end
local ck = p .. 'claim:' .. shard
if redis.call('GET', ck) ~= value then return 0 end
redis.call('DEL', ck)
redis.call('SREM', p .. 'claims', shard)
notify('claims:' .. shard)
return 1
"""
)

#: Every claim: ``ARGV = prefix`` -> ``{shard, claim value, ...}``.
CLAIMS = """
local p = ARGV[1]
local out = {}
for _, shard in ipairs(redis.call('SMEMBERS', p .. 'claims')) do
  local value = redis.call('GET', p .. 'claim:' .. shard)
  if value then
    out[#out + 1] = shard
    out[#out + 1] = value
  end
end
return out
"""

#: ``begin_run`` and ``end_run``: ``ARGV = prefix, shard, lease, claim value, record JSON`` ->
#: 1 (written) or 0 (the claim is no longer exactly this one, or the lease's member key is gone).
WRITE_RUN = (
    _NOTIFY
    + """
local shard, lease = ARGV[2], ARGV[3]
if redis.call('GET', p .. 'claim:' .. shard) ~= ARGV[4] then return 0 end
if redis.call('EXISTS', p .. 'member:' .. lease) == 0 then return 0 end
redis.call('SET', p .. 'run:' .. shard, ARGV[5])
redis.call('SADD', p .. 'runs', shard)
notify('run:' .. shard)
return 1
"""
)

#: Every run record: ``ARGV = prefix`` -> ``{shard, record JSON, ...}``.
RUNS = """
local p = ARGV[1]
local out = {}
for _, shard in ipairs(redis.call('SMEMBERS', p .. 'runs')) do
  local value = redis.call('GET', p .. 'run:' .. shard)
  if value then
    out[#out + 1] = shard
    out[#out + 1] = value
  end
end
return out
"""

#: ``ARGV = prefix, settings JSON, create_only ('1'/'0')`` -> 1 (written) or 0.
WRITE_SETTINGS = (
    _NOTIFY
    + """
if ARGV[3] == '1' and redis.call('EXISTS', p .. 'settings') == 1 then return 0 end
redis.call('SET', p .. 'settings', ARGV[2])
notify('settings')
return 1
"""
)

#: Compare-and-set of the control state:
#: ``ARGV = prefix, expected exists ('1'/'0'), expected JSON, new JSON`` -> 1 (set) or 0.
CONTROL_CAS = (
    _NOTIFY
    + """
local current = redis.call('GET', p .. 'control')
if ARGV[2] == '0' then
  if current then return 0 end
elseif current ~= ARGV[3] then
  return 0
end
redis.call('SET', p .. 'control', ARGV[4])
notify('control')
return 1
"""
)

#: ``close``: ``ARGV = prefix, lease`` -> deletes the lease, its member key and its claims.
CLOSE = (
    _NOTIFY
    + """
local lease = ARGV[2]
local lk = p .. 'lease:' .. lease
local held = redis.call('HGETALL', lk)
local claims = {}
for i = 1, #held, 2 do
  if string.sub(held[i], 1, 1) == 'c' then
    local shard = string.sub(held[i], 2)
    if redis.call('GET', p .. 'claim:' .. shard) == held[i + 1] then
      redis.call('DEL', p .. 'claim:' .. shard)
      redis.call('SREM', p .. 'claims', shard)
      claims[#claims + 1] = shard
    end
  end
end
local members = redis.call('DEL', p .. 'member:' .. lease)
members = members + redis.call('ZREM', p .. 'members', lease)
redis.call('DEL', lk)
if members > 0 then notify('members') end
if #claims > 0 then notify('claims:' .. table.concat(claims, ',')) end
return #claims
"""
)

#: Every script, by name.
SCRIPTS: dict[str, str] = {
    "lease": LEASE,
    "tick": TICK,
    "register": REGISTER,
    "publish": PUBLISH,
    "unregister": UNREGISTER,
    "members": MEMBERS,
    "claim": CLAIM,
    "release": RELEASE,
    "claims": CLAIMS,
    "write_run": WRITE_RUN,
    "runs": RUNS,
    "write_settings": WRITE_SETTINGS,
    "control_cas": CONTROL_CAS,
    "close": CLOSE,
}
