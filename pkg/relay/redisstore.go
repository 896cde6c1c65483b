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
// restart. Each session has one list (the FIFO queue) and one counter (its
// queued bytes), both under the same hash tag "{<twin>:<sid>}" so that they
// live in one Redis Cluster slot; every operation is one Lua script over
// those two keys. Why lists and not streams is explained in doc.go.
//
// An entry is the 8-byte big-endian deadline (unix seconds) followed by the
// envelope. Both keys expire a minute after the latest deadline they hold,
// so the queue of a twin that never comes back disappears on its own.
type RedisStore struct {
	client redis.UniversalClient
	opts   StoreOptions
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store using client (a *redis.Client or a
// *redis.ClusterClient; the caller owns and closes it). opts may be nil.
func NewRedisStore(client redis.UniversalClient, opts *StoreOptions) *RedisStore {
	return &RedisStore{client: client, opts: opts.withDefaults()}
}

// keyGrace is how long past its last deadline a queue key lives.
const keyGrace = time.Minute

var (
	// KEYS: list, bytes. ARGV: entry, max messages, max bytes, key ttl ms.
	pushScript = redis.NewScript(`
local n = redis.call('LLEN', KEYS[1])
local b = tonumber(redis.call('GET', KEYS[2]) or '0')
local sz = string.len(ARGV[1])
if n >= tonumber(ARGV[2]) or b + sz > tonumber(ARGV[3]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], sz)
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1`)

	// KEYS: list, bytes. ARGV: count.
	popScript = redis.NewScript(`
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
local sz = 0
for _, v in ipairs(items) do sz = sz + string.len(v) end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('DECRBY', KEYS[2], sz)
end
return items`)

	// KEYS: list, bytes. ARGV: key ttl ms, entries in reverse order.
	requeueScript = redis.NewScript(`
local sz = 0
for i = 2, #ARGV do
  redis.call('LPUSH', KEYS[1], ARGV[i])
  sz = sz + string.len(ARGV[i])
end
redis.call('INCRBY', KEYS[2], sz)
local ttl = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1`)
)

// keys returns the list and byte-counter keys of a session. The sid is
// base64url encoded so that it can hold neither braces nor separators.
func (s *RedisStore) keys(k SessionKey) []string {
	tag := s.opts.Prefix + "{" + strconv.FormatUint(uint64(k.Twin), 10) + ":" +
		base64.RawURLEncoding.EncodeToString([]byte(k.SID)) + "}"
	return []string{tag + ":q", tag + ":n"}
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

func keyTTL(deadline time.Time) int64 {
	return max(time.Until(deadline)+keyGrace, keyGrace).Milliseconds()
}

// Push implements Store.
func (s *RedisStore) Push(ctx context.Context, k SessionKey, m Message) error {
	ok, err := pushScript.Run(ctx, s.client, s.keys(k),
		encodeEntry(m), s.opts.MaxMessages, s.opts.MaxBytes, keyTTL(m.Deadline)).Int()
	if err != nil {
		return fmt.Errorf("relay: redis push: %w", err)
	}
	if ok == 0 {
		return ErrQueueFull
	}
	return nil
}

// Pop implements Store.
func (s *RedisStore) Pop(ctx context.Context, k SessionKey, n int, now time.Time) ([]Message, int, error) {
	items, err := popScript.Run(ctx, s.client, s.keys(k), n).StringSlice()
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
	args := make([]any, 0, len(msgs)+1)
	var last time.Time
	for _, m := range msgs {
		if m.Deadline.After(last) {
			last = m.Deadline
		}
	}
	args = append(args, keyTTL(last))
	for i := len(msgs) - 1; i >= 0; i-- {
		args = append(args, encodeEntry(msgs[i]))
	}
	if err := requeueScript.Run(ctx, s.client, s.keys(k), args...).Err(); err != nil {
		return fmt.Errorf("relay: redis requeue: %w", err)
	}
	return nil
}

// Len implements Store.
func (s *RedisStore) Len(ctx context.Context, k SessionKey) (int, error) {
	n, err := s.client.LLen(ctx, s.keys(k)[0]).Result()
	if err != nil {
		return 0, fmt.Errorf("relay: redis len: %w", err)
	}
	return int(n), nil
}
