"""The Lua scripts of the result store (shared/results.py), each one round trip."""

# Renew a lease only while we still hold it.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

# Create a job unless its model's queue is full: the check and the write in one step.
# KEYS: record, index, model's queued set, events. ARGV: record, ttl_s, created_at, id,
# max queued (0: no limit), expiry cutoff, first event's data, events maxlen.
CREATE = """
redis.call('zremrangebyscore', KEYS[3], '-inf', ARGV[6])
local depth = redis.call('zcard', KEYS[3])
if tonumber(ARGV[5]) > 0 and depth >= tonumber(ARGV[5]) then
  return {0, depth}
end
if not redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
  return {-1, depth}
end
redis.call('zadd', KEYS[2], ARGV[3], ARGV[4])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
redis.call('xadd', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'event', 'status', 'data', ARGV[7])
redis.call('expire', KEYS[4], ARGV[2])
return {1, depth}
"""

# The write half of ResultStore._update: run the given commands only if the record is
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
