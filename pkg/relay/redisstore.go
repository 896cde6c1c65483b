package relay

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore is a Store in Redis, so queued envelopes survive a relay
// restart. Every key of a twin sits under the hash tag "{<twin>}", so that
// one Lua script can check and update the session's queue and the twin's
// totals atomically in one Redis Cluster slot. Why lists and not streams is
// explained in docs/internals.md ("Store and forward"). A twin's keys:
//
//	<prefix>{<twin>}:<sid>:q  the session's FIFO queue (a list)
//	<prefix>{<twin>}:use      a hash: "n" and "b", messages and bytes of all
//	                           the twin's sessions; "n:<sid>", "b:<sid>" per
//	                           session
//	<prefix>{<twin>}:sids     a sorted set: each session id with the time
//	                           (unix ms) its queue key expires
//
// (the sid is base64url encoded). With a plain Redis (not a cluster) two
// more keys bound the whole store: <prefix>total, a hash of each twin's
// bytes and their sum "b", and <prefix>twins, each twin with the time its
// keys expire.
//
// An entry is the 8-byte big-endian deadline (unix seconds) followed by the
// envelope. A queue key expires a minute after the latest deadline it holds,
// so the queue of a twin that never comes back disappears on its own; the
// next push to the twin (or to any twin, for the store total) subtracts the
// expired queues from the totals, so what expired is not counted for ever.
type RedisStore struct {
	client  redis.UniversalClient
	opts    StoreOptions
	cluster bool // no store-wide total: its keys would cross slots
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store using client (a *redis.Client or a
// *redis.ClusterClient; the caller owns and closes it). opts may be nil.
// It needs Redis 7.0 or later.
func NewRedisStore(client redis.UniversalClient, opts *StoreOptions) *RedisStore {
	_, cluster := client.(*redis.ClusterClient)
	return &RedisStore{client: client, opts: opts.withDefaults(), cluster: cluster}
}

// keyGrace is how long past its last deadline a queue key lives.
const keyGrace = time.Minute

// The scripts share these Lua helpers. KEYS: queue, use, sids, and, unless
// on a cluster, total, twins. The clock is Redis's own (TIME), the one that
// expires the keys; a queue is counted out a second after its key expired.
const luaCommon = `
local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(v) return tonumber(v or '0') or 0 end
-- add adds n messages of b bytes to session sid of twin, everywhere.
local function add(twin, sid, n, b)
  redis.call('HINCRBY', KEYS[2], 'n', n)
  redis.call('HINCRBY', KEYS[2], 'b', b)
  redis.call('HINCRBY', KEYS[2], 'n:' .. sid, n)
  redis.call('HINCRBY', KEYS[2], 'b:' .. sid, b)
  if #KEYS >= 5 then
    redis.call('HINCRBY', KEYS[4], 'b', b)
    if redis.call('HINCRBY', KEYS[4], twin, b) <= 0 then
      redis.call('HDEL', KEYS[4], twin)
      redis.call('ZREM', KEYS[5], twin)
    end
  end
end
-- forget removes session sid from the twin's counts.
local function forget(twin, sid)
  local n = num(redis.call('HGET', KEYS[2], 'n:' .. sid))
  local b = num(redis.call('HGET', KEYS[2], 'b:' .. sid))
  add(twin, sid, -n, -b)
  redis.call('HDEL', KEYS[2], 'n:' .. sid, 'b:' .. sid)
  redis.call('ZREM', KEYS[3], sid)
end
-- reconcile subtracts the queues (and, with the total, whole twins) whose
-- keys expired, and makes the total's entry of twin what its keys say.
local function reconcile(twin)
  local before = nowms() - 1000
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', before, 'LIMIT', 0, 64)) do
    forget(twin, sid)
  end
  if #KEYS >= 5 then
    for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', before, 'LIMIT', 0, 64)) do
      redis.call('HINCRBY', KEYS[4], 'b', -num(redis.call('HGET', KEYS[4], t)))
      redis.call('HDEL', KEYS[4], t)
      redis.call('ZREM', KEYS[5], t)
    end
    local b = num(redis.call('HGET', KEYS[2], 'b'))
    local d = b - num(redis.call('HGET', KEYS[4], twin))
    if d ~= 0 then
      redis.call('HINCRBY', KEYS[4], 'b', d)
      redis.call('HINCRBY', KEYS[4], twin, d)
    end
    if b > 0 then
      redis.call('ZADD', KEYS[5], redis.call('PEXPIRETIME', KEYS[2]), twin)
    else
      redis.call('HDEL', KEYS[4], twin)
      redis.call('ZREM', KEYS[5], twin)
    end
  end
end
-- extend makes the queue live until at least exp (unix ms), and the
-- twin's keys as long as its longest queue.
local function extend(twin, sid, exp)
  if redis.call('PEXPIRETIME', KEYS[1]) < exp then
    redis.call('PEXPIREAT', KEYS[1], exp)
    redis.call('ZADD', KEYS[3], exp, sid)
  end
  if redis.call('PEXPIRETIME', KEYS[2]) < exp then
    redis.call('PEXPIREAT', KEYS[2], exp)
    redis.call('PEXPIREAT', KEYS[3], exp)
  end
  if #KEYS >= 5 then
    redis.call('ZADD', KEYS[5], redis.call('PEXPIRETIME', KEYS[2]), twin)
  end
end
`

var (
	// ARGV: twin, sid, entry, max messages, max bytes, twin max messages,
	// twin max bytes, total max bytes, expiry unix ms. Returns 1 when
	// queued, 0 (session full), -1 (twin full) or -2 (store full).
	pushScript = redis.NewScript(luaCommon + `
local twin, sid, sz = ARGV[1], ARGV[2], string.len(ARGV[3])
reconcile(twin)
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[4]) or num(redis.call('HGET', KEYS[2], 'b:' .. sid)) + sz > tonumber(ARGV[5]) then
  return 0
end
if num(redis.call('HGET', KEYS[2], 'n')) >= tonumber(ARGV[6]) or num(redis.call('HGET', KEYS[2], 'b')) + sz > tonumber(ARGV[7]) then
  return -1
end
if #KEYS >= 5 and num(redis.call('HGET', KEYS[4], 'b')) + sz > tonumber(ARGV[8]) then
  return -2
end
redis.call('RPUSH', KEYS[1], ARGV[3])
add(twin, sid, 1, sz)
extend(twin, sid, tonumber(ARGV[9]))
return 1`)

	// ARGV: twin, sid, count.
	popScript = redis.NewScript(luaCommon + `
local twin, sid = ARGV[1], ARGV[2]
local items = redis.call('LPOP', KEYS[1], ARGV[3])
if not items then return {} end
if redis.call('LLEN', KEYS[1]) == 0 then
  forget(twin, sid)
else
  local sz = 0
  for _, v in ipairs(items) do sz = sz + string.len(v) end
  add(twin, sid, -#items, -sz)
end
return items`)

	// ARGV: twin, sid, expiry unix ms, entries in reverse order.
	requeueScript = redis.NewScript(luaCommon + `
local twin, sid = ARGV[1], ARGV[2]
reconcile(twin)
local sz = 0
for i = 4, #ARGV do
  redis.call('LPUSH', KEYS[1], ARGV[i])
  sz = sz + string.len(ARGV[i])
end
add(twin, sid, #ARGV - 3, sz)
extend(twin, sid, tonumber(ARGV[3]))
return 1`)
)

// keys returns the keys of session k (see RedisStore) and the twin and sid
// arguments of the scripts. The sid is base64url encoded so that it can
// hold neither braces nor separators.
func (s *RedisStore) keys(k SessionKey) (keys []string, twin, sid string) {
	twin = strconv.FormatUint(uint64(k.Twin), 10)
	sid = base64.RawURLEncoding.EncodeToString([]byte(k.SID))
	tag := s.opts.Prefix + "{" + twin + "}"
	keys = []string{tag + ":" + sid + ":q", tag + ":use", tag + ":sids"}
	if !s.cluster {
		keys = append(keys, s.opts.Prefix+"total", s.opts.Prefix+"twins")
	}
	return keys, twin, sid
}

func encodeEntry(m Message) string {
	b := make([]byte, 8, 8+len(m.Data))
	binary.BigEndian.PutUint64(b, uint64(max(m.Deadline.Unix(), 0)))
	return string(append(b, m.Data...))
}

func decodeEntry(s string) (Message, bool) {
	if len(s) < 8 {
		return Message{}, false
	}
	d := binary.BigEndian.Uint64([]byte(s[:8]))
	return Message{Data: []byte(s[8:]), Deadline: time.Unix(int64(d), 0)}, true
}

// keyExpiry is when (unix ms) the key of a queue holding an envelope with
// deadline may go.
func keyExpiry(deadline time.Time) int64 {
	if now := time.Now(); deadline.Before(now) {
		deadline = now
	}
	return deadline.Add(keyGrace).UnixMilli()
}

// Push implements Store.
func (s *RedisStore) Push(ctx context.Context, k SessionKey, m Message) error {
	keys, twin, sid := s.keys(k)
	res, err := pushScript.Run(ctx, s.client, keys, twin, sid, encodeEntry(m),
		s.opts.MaxMessages, s.opts.MaxBytes, s.opts.MaxTwinMessages, s.opts.MaxTwinBytes,
		s.opts.MaxTotalBytes, keyExpiry(m.Deadline)).Int()
	if err != nil {
		return fmt.Errorf("relay: redis push: %w", err)
	}
	switch res {
	case 0:
		return ErrQueueFull
	case -1:
		return ErrTwinQueueFull
	case -2:
		return ErrStoreFull
	}
	return nil
}

// Pop implements Store.
func (s *RedisStore) Pop(ctx context.Context, k SessionKey, n int, now time.Time) ([]Message, int, error) {
	keys, twin, sid := s.keys(k)
	items, err := popScript.Run(ctx, s.client, keys, twin, sid, n).StringSlice()
	if err != nil {
		return nil, 0, fmt.Errorf("relay: redis pop: %w", err)
	}
	out := make([]Message, 0, len(items))
	expired := 0
	for _, it := range items {
		m, ok := decodeEntry(it)
		if !ok || !m.Deadline.After(now) {
			expired++
			continue
		}
		out = append(out, m)
	}
	return out, expired, nil
}

// Requeue implements Store.
func (s *RedisStore) Requeue(ctx context.Context, k SessionKey, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	keys, twin, sid := s.keys(k)
	args := make([]any, 0, len(msgs)+3)
	var last time.Time
	for _, m := range msgs {
		if m.Deadline.After(last) {
			last = m.Deadline
		}
	}
	args = append(args, twin, sid, keyExpiry(last))
	for i := len(msgs) - 1; i >= 0; i-- {
		args = append(args, encodeEntry(msgs[i]))
	}
	if err := requeueScript.Run(ctx, s.client, keys, args...).Err(); err != nil {
		return fmt.Errorf("relay: redis requeue: %w", err)
	}
	return nil
}

// Len implements Store.
func (s *RedisStore) Len(ctx context.Context, k SessionKey) (int, error) {
	keys, _, _ := s.keys(k)
	n, err := s.client.LLen(ctx, keys[0]).Result()
	if err != nil {
		return 0, fmt.Errorf("relay: redis len: %w", err)
	}
	return int(n), nil
}
