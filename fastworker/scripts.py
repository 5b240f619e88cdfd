"""Named Lua scripts. redis-py's Script object loads each once (EVALSHA) and reloads it on NOSCRIPT."""

# Reliable batch fetch: move up to ARGV[1] jobs from the queues into this process's in-progress
# lists, atomically per job (LMOVE), in one round trip.
# KEYS = queue:<q1>, <inprogress q1>, queue:<q2>, <inprogress q2>, ...
# ARGV[2] = "" -> strict: drain the queues in the given order.
#           else one byte per queue index (1-based) for every slot: slot i tries the queues in the
#           order bytes[i*nq+1 .. i*nq+nq] (the per-fetch shuffled order Sidekiq's weighted mode uses).
# Returns a flat array: queue index, job, queue index, job, ...
FETCH = """
local n = tonumber(ARGV[1])
local nq = #KEYS / 2
local out = {}
local orders = ARGV[2]
if orders == "" then
  local got = 0
  for q = 1, nq do
    while got < n do
      local job = redis.call('LMOVE', KEYS[2*q-1], KEYS[2*q], 'RIGHT', 'LEFT')
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
      local job = redis.call('LMOVE', KEYS[2*q-1], KEYS[2*q], 'RIGHT', 'LEFT')
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
# members, rewrites each job's JSON (fresh enqueued_at, in the job's own timestamp format) and
# passes triples here. A member moves only if this call removed it from the set (ZREM == 1), so any
# number of schedulers can run at once without duplicating or losing a job.
# KEYS[1] = the set, KEYS[2] = the `queues` set; ARGV = old member, queue key, queue name, new JSON, ...
# Returns the number moved.
MOVE_DUE = """
local moved = 0
for i = 1, #ARGV, 4 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[i+2])
    redis.call('LPUSH', ARGV[i+1], ARGV[i+3])
    moved = moved + 1
  end
end
return moved
"""

# Move members of a sorted set that cannot be decoded to the dead set, trimmed as Sidekiq trims it.
# KEYS[1] = the set, KEYS[2] = dead; ARGV[1] = now, ARGV[2] = cutoff score, ARGV[3] = max jobs,
# ARGV[4..] = members. Returns the number moved.
KILL_FROM_SET = """
local n = 0
for i = 4, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
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

# Ack a batch: remove each finished job from its in-progress list. One command for the whole
# batch (redis-py packs one command instead of N). KEYS = the distinct in-progress lists;
# ARGV = key index (1-based), job, key index, job, ...
ACK = """
for i = 1, #ARGV, 2 do
  redis.call('LREM', KEYS[tonumber(ARGV[i])], 1, ARGV[i+1])
end
return #ARGV / 2
"""
