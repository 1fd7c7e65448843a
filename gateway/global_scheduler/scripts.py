"""Lua scripts: every state change of the global scheduler is one atomic script on Redis.

Keys of a topic share the prefix `pllm:{<topic>}:` (one hash slot). Per instance I: `alive:I` (expiring
liveness), `q:I` (list of request ids I's clients sent), `held:I` (ids I has leased). Per request R: `req:R`
(hash: body, origin, attempt, seq = next chunk number), `toks:R` (ids already streamed, "1,2,"), `res:R` (the
result stream), `cancel:R`. Topic-wide: `instances`, `shard` (I -> load shard), `load:<n>` (zsets I -> load =
queued + leased), `leases` (zset R -> expiry ms), `owner` (R -> "I#epoch", the fencing token), `epoch`.
"""

from __future__ import annotations

# Shared helpers, prepended to each script.
_LIB = """
local P = ARGV[1]
local function addload(iid, delta)
  local s = redis.call('HGET', P..'shard', iid)
  if s and delta ~= 0 then redis.call('ZADD', P..'load:'..s, 'XX', 'INCR', delta, iid) end
end
local function lease(rid, me, now, lease_ms)
  local tok = me..'#'..redis.call('INCR', P..'epoch')
  redis.call('HSET', P..'owner', rid, tok)
  redis.call('ZADD', P..'leases', now + lease_ms, rid)
  redis.call('SADD', P..'held:'..me, rid)
  return tok
end
local function release(rid, me)
  redis.call('HDEL', P..'owner', rid)
  redis.call('ZREM', P..'leases', rid)
  if redis.call('SREM', P..'held:'..me, rid) == 1 then addload(me, -1) end
end
local function drop(rid)
  redis.call('DEL', P..'req:'..rid, P..'toks:'..rid, P..'res:'..rid)
end
local function leased_reply(rid, tok, src)
  local r = redis.call('HMGET', P..'req:'..rid, 'body', 'attempt', 'seq')
  return {rid, tok, r[1], r[2], r[3], redis.call('GET', P..'toks:'..rid) or '', src}
end
"""

# ARGV: P, me, rid, body, max_size, self_take, now_ms, lease_ms, state_ttl_s
ENQUEUE = (
    _LIB
    + """
local me, rid = ARGV[2], ARGV[3]
local q = P..'q:'..me
local qlen = redis.call('LLEN', q)
if redis.call('EXISTS', P..'alive:'..me) == 0 then return {'unregistered'} end
redis.call('HSET', P..'req:'..rid, 'body', ARGV[4], 'origin', me, 'attempt', 0, 'seq', 0)
redis.call('EXPIRE', P..'req:'..rid, ARGV[9])
if ARGV[6] == '1' and qlen == 0 then
  local tok = lease(rid, me, tonumber(ARGV[7]), tonumber(ARGV[8]))
  addload(me, 1)
  return {'leased', tok}
end
local max = tonumber(ARGV[5])
if max >= 0 and qlen >= max then drop(rid) return {'full'} end
redis.call('RPUSH', q, rid)
addload(me, 1)
return {'queued'}
"""
)

# Own queue first, else steal from the most loaded live instance whose load exceeds min_load.
# ARGV: P, me, now_ms, lease_ms, min_load, shards_num, allow_steal. Returns {} or leased_reply.
TAKE = (
    _LIB
    + """
local me, now, lease_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function pop_live(src)
  local q = P..'q:'..src
  for _ = 1, 64 do
    local rid = redis.call('LPOP', q)
    if not rid then return nil end
    addload(src, -1)
    local origin = redis.call('HGET', P..'req:'..rid, 'origin')
    if origin and redis.call('EXISTS', P..'alive:'..origin) == 1 then return rid end
    -- cancelled, expired, or its origin is dead (nobody to stream to): forget it
    if origin then drop(rid) end
  end
  return nil
end
local function take_from(src)
  local rid = pop_live(src)
  if not rid then return nil end
  local tok = lease(rid, me, now, lease_ms)
  addload(me, 1)
  return leased_reply(rid, tok, src)
end
local got = take_from(me)
if got then return got end
if ARGV[7] ~= '1' then return {} end
local best, best_load = nil, tonumber(ARGV[5])
for s = 0, tonumber(ARGV[6]) - 1 do
  local c = redis.call('ZREVRANGEBYSCORE', P..'load:'..s, '+inf', '('..ARGV[5], 'WITHSCORES', 'LIMIT', 0, 16)
  for i = 1, #c, 2 do
    local iid, load = c[i], tonumber(c[i + 1])
    if iid ~= me and load > best_load and redis.call('LLEN', P..'q:'..iid) > 0
        and redis.call('EXISTS', P..'alive:'..iid) == 1 then
      best, best_load = iid, load
    end
  end
end
if best then return take_from(best) or {} end
return {}
"""
)

# Fenced write of one result record. ARGV: P, me, rid, token, seq, kind, data, ids_csv, final, state_ttl_s
PUSH = (
    _LIB
    + """
local me, rid = ARGV[2], ARGV[3]
if redis.call('HGET', P..'owner', rid) ~= ARGV[4] then return 'lost' end
local rk = P..'req:'..rid
local seq, origin = unpack(redis.call('HMGET', rk, 'seq', 'origin'))
if (not seq) or redis.call('EXISTS', P..'cancel:'..rid) == 1 then release(rid, me) return 'cancelled' end
if redis.call('EXISTS', P..'alive:'..origin) == 0 then
  -- the origin died: nobody will read the result
  release(rid, me)
  drop(rid)
  return 'cancelled'
end
if tonumber(seq) ~= tonumber(ARGV[5]) then return 'lost' end
local sk = P..'res:'..rid
redis.call('XADD', sk, '*', 'n', seq, 'k', ARGV[6], 'd', ARGV[7])
redis.call('EXPIRE', sk, ARGV[10])
redis.call('HSET', rk, 'seq', tonumber(seq) + 1)
if ARGV[8] ~= '' then
  redis.call('APPEND', P..'toks:'..rid, ARGV[8])
  redis.call('EXPIRE', P..'toks:'..rid, ARGV[10])
end
if ARGV[9] == '1' then release(rid, me) end
return 'ok'
"""
)

# Give a leased request back (its executor's engine failed): front of the origin's queue, attempt + 1, so the
# next taker resumes it. token "" = any lease of `me` (an in-process run, which then also records the ids and
# chunk count it delivered, so the resume continues from there). ARGV: P, me, rid, token, ids_csv, seq, ttl
REQUEUE = (
    _LIB
    + """
local me, rid = ARGV[2], ARGV[3]
local tok = redis.call('HGET', P..'owner', rid)
if not tok or (tok ~= ARGV[4] and not (ARGV[4] == '' and string.sub(tok, 1, #me + 1) == me..'#')) then
  return 0
end
release(rid, me)
local rk = P..'req:'..rid
local origin = redis.call('HGET', rk, 'origin')
if not origin then return 0 end
redis.call('HINCRBY', rk, 'attempt', 1)
if ARGV[6] ~= '' then
  redis.call('HSET', rk, 'seq', ARGV[6])
  redis.call('SET', P..'toks:'..rid, ARGV[5], 'EX', ARGV[7])
end
redis.call('LPUSH', P..'q:'..origin, rid)
addload(origin, 1)
return 1
"""
)

# Liveness, absolute load, lease renewal. ARGV: P, me, shard, info, now_ms, alive_ms, lease_ms, active rids...
HEARTBEAT = (
    _LIB
    + """
local me = ARGV[2]
redis.call('SET', P..'alive:'..me, '1', 'PX', ARGV[6])
redis.call('HSET', P..'instances', me, ARGV[4])
redis.call('HSET', P..'shard', me, ARGV[3])
-- Renew only the leases of requests still in hand here (ARGV[8..]): a lease whose run stopped without
-- ending it (Redis outage, a bug) then expires, and its request resumes elsewhere.
local active = {}
for i = 8, #ARGV do active[ARGV[i]] = true end
local n = 0
for _, rid in ipairs(redis.call('SMEMBERS', P..'held:'..me)) do
  local tok = redis.call('HGET', P..'owner', rid)
  if tok and string.sub(tok, 1, #me + 1) == me..'#' then
    if active[rid] then
      redis.call('ZADD', P..'leases', 'XX', tonumber(ARGV[5]) + tonumber(ARGV[7]), rid)
    end
    n = n + 1
  else
    redis.call('SREM', P..'held:'..me, rid)
  end
end
local load = redis.call('LLEN', P..'q:'..me) + n
redis.call('ZADD', P..'load:'..ARGV[3], load, me)
return load
"""
)

# Expired leases go back to the front of their origin's queue (attempt + 1, so the next taker resumes);
# dead instances' queues move to this instance's queue and leave the registry. ARGV: P, me, now_ms
REAP = (
    _LIB
    + """
local me = ARGV[2]
local expired = redis.call('ZRANGEBYSCORE', P..'leases', '-inf', ARGV[3], 'LIMIT', 0, 256)
for _, rid in ipairs(expired) do
  local tok = redis.call('HGET', P..'owner', rid)
  redis.call('HDEL', P..'owner', rid)
  redis.call('ZREM', P..'leases', rid)
  if tok then
    local old = string.match(tok, '^(.*)#')
    if redis.call('SREM', P..'held:'..old, rid) == 1 then addload(old, -1) end
  end
  local origin = redis.call('HGET', P..'req:'..rid, 'origin')
  if origin then
    redis.call('HINCRBY', P..'req:'..rid, 'attempt', 1)
    redis.call('LPUSH', P..'q:'..origin, rid)
    addload(origin, 1)
  end
end
local dead, moved = 0, 0
for _, iid in ipairs(redis.call('HKEYS', P..'instances')) do
  if iid ~= me and redis.call('EXISTS', P..'alive:'..iid) == 0 then
    while redis.call('LMOVE', P..'q:'..iid, P..'q:'..me, 'LEFT', 'RIGHT') do moved = moved + 1 end
    local s = redis.call('HGET', P..'shard', iid)
    if s then redis.call('ZREM', P..'load:'..s, iid) end
    redis.call('HDEL', P..'shard', iid)
    redis.call('HDEL', P..'instances', iid)
    redis.call('DEL', P..'held:'..iid)
    dead = dead + 1
  end
end
addload(me, moved)
return {#expired, dead, moved}
"""
)

# Origin-side state of a request that has produced nothing yet. ARGV: P, me, rid, expire_now
# 'expired' (removed: not started within the TTL), 'queued', 'running', 'pending' (moved elsewhere), 'lost'.
STATUS = (
    _LIB
    + """
local me, rid = ARGV[2], ARGV[3]
local attempt = redis.call('HGET', P..'req:'..rid, 'attempt')
if not attempt then return 'lost' end
if redis.call('HEXISTS', P..'owner', rid) == 1 then return 'running' end
if attempt == '0' and redis.call('LPOS', P..'q:'..me, rid) then
  if ARGV[4] == '1' then
    redis.call('LREM', P..'q:'..me, 1, rid)
    addload(me, -1)
    drop(rid)
    return 'expired'
  end
  return 'queued'
end
return 'pending'
"""
)

# The origin is done with a request (finished, or its client left). ARGV: P, me, rid, state_ttl_s
FORGET = (
    _LIB
    + """
local me, rid = ARGV[2], ARGV[3]
if redis.call('LREM', P..'q:'..me, 1, rid) > 0 then addload(me, -1) end
local tok = redis.call('HGET', P..'owner', rid)
if tok and string.sub(tok, 1, #me + 1) == me..'#' then
  release(rid, me)  -- it ran here, in-process: its lease ends with its stream
elseif tok then
  redis.call('SET', P..'cancel:'..rid, '1', 'EX', ARGV[4])
end
drop(rid)
return 1
"""
)
