"""The Lua scripts of the job store (shared/store/jobs.py), each one round trip."""

# Renew a lease only while we still hold it.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

# Create a job unless its model's queue is full: the check and the write in one step,
# counted in the metrics hash with them (submitted, or rejected when full).
# KEYS: record, index, model's queued set, events, metrics, queue deadlines. ARGV: record,
# ttl_s, created_at, id, max queued (0: no limit), expiry cutoff, first event's data, events
# maxlen, submitted field, rejected field, queue deadline ('' for a job with none).
CREATE = """
redis.call('zremrangebyscore', KEYS[3], '-inf', ARGV[6])
local depth = redis.call('zcard', KEYS[3])
if tonumber(ARGV[5]) > 0 and depth >= tonumber(ARGV[5]) then
  redis.call('hincrby', KEYS[5], ARGV[10], 1)
  return {0, depth}
end
if not redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
  return {-1, depth}
end
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
redis.call('xadd', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'event', 'status', 'data', ARGV[7])
redis.call('expire', KEYS[4], ARGV[2])
redis.call('hincrby', KEYS[5], ARGV[9], 1)
if ARGV[11] ~= '' then
  redis.call('zadd', KEYS[6], ARGV[11], ARGV[4])
end
return {1, depth}
"""

# Queued jobs of several models by priority, for the metrics scrape: one round trip, no
# records sent back. KEYS: each model's queued set. ARGV: expiry cutoff, job key prefix.
# Returns, per model, the counts of [high, normal, low].
QUEUED_BY_PRIORITY = """
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('zremrangebyscore', key, '-inf', ARGV[1])
  local counts = {high = 0, normal = 0, low = 0}
  for _, id in ipairs(redis.call('zrange', key, 0, -1)) do
    local raw = redis.call('get', ARGV[2] .. id)
    if raw then
      local p = cjson.decode(raw)['priority']
      if counts[p] then counts[p] = counts[p] + 1 end
    end
  end
  out[i] = {counts.high, counts.normal, counts.low}
end
return out
"""

# The write half of JobStore._update: run the given commands only if the record is
# still the one read and a lease still exists (or not) as it did. KEYS: record, lease.
# ARGV: record as read, 1/0 leased, number of commands, then each as (count, words...).
# The commands name their own keys (one job's keys): fine on one Redis server, which is
# what conveyor runs on; a Redis Cluster would need them all in KEYS and one hash slot.
COMMIT = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('exists', KEYS[2]) ~= tonumber(ARGV[2]) then return 0 end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""
