"""Named Lua scripts. redis-py's Script object loads each once (EVALSHA) and reloads it on NOSCRIPT."""

# Ack, count and fetch in one round trip: what a finished batch frees is refilled by the same call.
# 1. remove each finished job from its in-progress list (the ack);
# 2. add the Sidekiq stat counters for them (stat:processed/failed and the per-day keys, with TTL);
# 3. move up to ARGV[1] jobs from the queues into this process's in-progress lists, atomically per
#    job (LMOVE), one per free concurrency token (none when ARGV[1] is 0: a bare ack flush).
# One script instead of a pipeline: redis-py sends SCRIPT EXISTS before every pipeline that holds a
# script, while a bare EVALSHA loads the script only on NOSCRIPT.
# KEYS = stat:processed, stat:processed:<day>, stat:failed, stat:failed:<day>,
#        then queue:<q1>, <inprogress q1>, queue:<q2>, <inprogress q2>, ...
# ARGV[1] = jobs to fetch; ARGV[2] = "" -> strict: drain the queues in the given order, else one byte
#           per queue index (1-based) for every slot: slot i tries the queues in the order
#           bytes[i*nq+1 .. i*nq+nq] (the per-fetch shuffled order of Sidekiq's weighted mode);
# ARGV[3] = processed, ARGV[4] = failed, ARGV[5] = the per-day keys' TTL;
# ARGV[6] = nq, how many of the queue pairs are fetched from (the first nq; pairs after them are
#           there only for acks: a queue of another capsule, whose job this call acks);
# ARGV[7..] = acks: queue index (1-based), job, queue index, job, ...
# Returns a flat array of what was fetched: queue index, job, queue index, job, ...
ACK_FETCH = """
for i = 7, #ARGV, 2 do
  redis.call('LREM', KEYS[4 + 2 * tonumber(ARGV[i])], 1, ARGV[i+1])
end
for k = 0, 1 do  -- processed (KEYS 1, 2), then failed (KEYS 3, 4)
  local count = tonumber(ARGV[3 + k])
  if count > 0 then
    redis.call('INCRBY', KEYS[1 + 2*k], count)
    redis.call('INCRBY', KEYS[2 + 2*k], count)
    redis.call('EXPIRE', KEYS[2 + 2*k], ARGV[5])
  end
end
local n = tonumber(ARGV[1])
local nq = tonumber(ARGV[6])
local out = {}
local orders = ARGV[2]
if n <= 0 then return out end
if orders == "" then
  local got = 0
  for q = 1, nq do
    while got < n do
      local job = redis.call('LMOVE', KEYS[3 + 2*q], KEYS[4 + 2*q], 'RIGHT', 'LEFT')
      if not job then break end
      out[#out+1] = q
      out[#out+1] = job
      got = got + 1
    end
    if got >= n then break end
  end
else
  local pos = 1
  for slot = 1, n do
    local found = false
    for i = 0, nq - 1 do
      local q = string.byte(orders, pos + i)
      local job = redis.call('LMOVE', KEYS[3 + 2*q], KEYS[4 + 2*q], 'RIGHT', 'LEFT')
      if job then
        out[#out+1] = q
        out[#out+1] = job
        found = true
        break
      end
    end
    if not found then break end
    pos = pos + nq
  end
end
return out
"""

# Move due members of a sorted set (schedule or retry) to their queues. Python reads the due
# members, rewrites each job's JSON (fresh enqueued_at, in the job's own timestamp format; or as the
# app's client middleware left it) and passes quintuples here. A member moves only if it is still
# due (its score may have been changed since it was read, e.g. by SortedEntry#reschedule) and this
# call removed it from the set (ZREM == 1), so any number of schedulers can run at once without
# duplicating or losing a job.
# KEYS[1] = the set, KEYS[2] = the `queues` set; ARGV[1] = now (the score limit, inclusive),
# then ARGV = old member, what to do, target key, queue name or score, new JSON, ... where what to
# do is "q" (LPUSH to the queue), "z" (ZADD to the schedule set: a middleware set "at") or "x"
# (only remove it: a middleware dropped it, as Sidekiq's client drops it).
# Returns the number this call removed.
MOVE_DUE = """
local now = tonumber(ARGV[1])
local moved = 0
for i = 2, #ARGV, 5 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now and redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local what = ARGV[i+1]
    if what == 'q' then
      redis.call('SADD', KEYS[2], ARGV[i+3])
      redis.call('LPUSH', ARGV[i+2], ARGV[i+4])
    elseif what == 'z' then
      redis.call('ZADD', ARGV[i+2], ARGV[i+3], ARGV[i+4])
    end
    moved = moved + 1
  end
end
return moved
"""

# Take due members out of a sorted set (schedule or retry) for this scheduler alone, before the app's
# client middleware runs on them: each moves to the pushing set only if it is still due and this call
# removed it (ZREM == 1), so under any number of schedulers the middleware runs once per job, as
# Sidekiq's poller runs it after its own ZREM. MOVE_DUE then moves them on from the pushing set.
# KEYS[1] = the set, KEYS[2] = its pushing set; ARGV[1] = now, ARGV[2] = the lease's end (the score
# in the pushing set: a scheduler that dies holding them leaves them there until then), ARGV[3..] =
# members. Returns the members this call took.
CLAIM_DUE = """
local now = tonumber(ARGV[1])
local taken = {}
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now and redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
    taken[#taken + 1] = ARGV[i]
  end
end
return taken
"""

# Move members of a sorted set that cannot be decoded to the dead set, trimmed as Sidekiq trims it.
# KEYS[1] = the set, KEYS[2] = dead; ARGV[1] = now, ARGV[2] = cutoff score, ARGV[3] = max jobs,
# ARGV[4..] = pairs: the member, and what to write to the dead set for it
# (retry.dead_member_for: the member itself, or a wrapper for JSON Sidekiq's API cannot list).
# Returns the number moved.
KILL_FROM_SET = """
local n = 0
for i = 4, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i+1])
    n = n + 1
  end
end
if n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]))
end
return n
"""

# Put everything still in an in-progress list back at the head of its queue (oldest job next).
# KEYS[1] = the in-progress list, KEYS[2] = queue:<name>. Returns the number moved.
RETURN_INPROGRESS = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  n = n + 1
end
return n
"""

# Put jobs back at the head of their queue, each only if this call removed it from its in-progress
# list (LREM == 1). A job already acked, retried, killed or requeued by someone else is left alone,
# so a requeue retried after a lost reply, or racing another mover (the recoverer, a hard shutdown),
# never puts a second copy in the queue.
# KEYS = distinct keys; ARGV = in-progress key index, queue key index, job, ... (1-based indexes).
# Returns the number moved.
REQUEUE = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[tonumber(ARGV[i])], 1, ARGV[i+2]) == 1 then
    redis.call('RPUSH', KEYS[tonumber(ARGV[i+1])], ARGV[i+2])
    n = n + 1
  end
end
return n
"""

# Crash recovery of ONE process, claim and move in one atomic step (recoverer.py). The claim is the
# HDEL of its registration: only the recoverer whose script still finds the entry, old enough and
# without a live heartbeat key, moves anything, so two recoverers never both move a job, and a
# recoverer that dies half-way cannot leave a claimed process's jobs behind.
# Each job: HINCRBY its jid in the recovered-count hash; over the limit -> dead set (a poison pill
# that keeps killing processes), else back to the head of its queue (newest first, so the oldest
# is next in line, as RETURN_INPROGRESS does).
# KEYS[1] fastworker:processes, KEYS[2] <identity> (heartbeat), KEYS[3] its inprogress-queues set,
# KEYS[4] fastworker:recovered, KEYS[5] dead, then in-progress list, queue key, ... per queue.
# ARGV[1] identity, ARGV[2] registered-before cutoff (epoch s), ARGV[3] now, ARGV[4] poison-pill
# limit, ARGV[5] recovered-hash TTL, ARGV[6] dead cutoff score, ARGV[7] dead max jobs, then per job
# known in advance: raw, jid, dead-set member. A job not listed falls back to cjson for its jid and
# to its raw string as the dead-set member.
# Returns false when not claimed, else {requeued, dead, dead jid, ...}.
RECOVER = """
local reg = redis.call('HGET', KEYS[1], ARGV[1])
if not reg then return false end
if tonumber(reg) == nil or tonumber(reg) > tonumber(ARGV[2]) then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local known = {}
for i = 8, #ARGV, 3 do known[ARGV[i]] = i end
local limit = tonumber(ARGV[4])
local moved, dead, out = 0, 0, {}
for k = 6, #KEYS, 2 do
  while true do
    local job = redis.call('LPOP', KEYS[k])
    if not job then break end
    local jid, member = nil, job
    local i = known[job]
    if i then
      jid, member = ARGV[i+1], ARGV[i+2]
    else
      local ok, obj = pcall(cjson.decode, job)
      if ok and type(obj) == 'table' and type(obj['jid']) == 'string' then jid = obj['jid'] end
    end
    local n = 0
    if jid and jid ~= '' then n = redis.call('HINCRBY', KEYS[4], jid, 1) end
    if n > limit then
      redis.call('ZADD', KEYS[5], ARGV[3], member)
      redis.call('HDEL', KEYS[4], jid)
      dead = dead + 1
      out[#out+1] = jid
    else
      redis.call('RPUSH', KEYS[k+1], job)
      moved = moved + 1
    end
  end
end
if moved + dead > 0 then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
if dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -tonumber(ARGV[7]))
end
redis.call('DEL', KEYS[3])
table.insert(out, 1, dead)
table.insert(out, 1, moved)
return out
"""

# A job's exhaustion hooks waiting their turn (hooks.py) live in the sorted set KEYS[1], scored by
# when a process may next work on them. One step done: remove the entry (only if this call removed
# it: a second process whose lease ran out changes nothing), then, as the step says, add the job to
# the dead set (trimmed as Sidekiq trims it) and/or the entry for the next step.
# KEYS[1] = the hooks set, KEYS[2] = dead; ARGV[1] = the entry, ARGV[2] = the dead member or "",
# ARGV[3] = now, ARGV[4] = cutoff score, ARGV[5] = max dead jobs, ARGV[6] = the next entry or "",
# ARGV[7] = its score. Returns 1 if this call removed the entry.
HOOKS_STEP = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]))
end
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[1], ARGV[7], ARGV[6]) end
return 1
"""

# Claim up to ARGV[3] entries of the hooks set KEYS[1] that are due (score <= ARGV[1]): each is
# re-scored to ARGV[2] (now + a lease), so no other process takes it while this one works on it.
# Returns the claimed entries.
HOOKS_CLAIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, entry in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], entry) end
return due
"""
