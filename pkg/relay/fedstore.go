package relay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// fedStore keeps the federation jobs a relay accepted in Redis until they
// were posted or given up, so that a relay killed with -9 posts them when
// it starts again (on the same Redis, with the same first domain).
//
// One hash per relay, "rmb:relay:fed:{<first domain>}:jobs", maps a job id
// to the job; a counter next to it, ":bytes", holds the bytes of the hash's
// values. Both sit under one hash tag (one Redis Cluster slot) and are
// changed by Lua scripts only, so the bounds (jobs and bytes) hold in Redis
// as they do in memory. Both keys expire a minute after the latest deadline
// they hold: the jobs of a relay that never comes back go away on their own.
//
// A job is a version byte (1), the number of the destination twin's relays
// and each of them (uvarint length, bytes), then the envelope as received.
// The source, uid and deadline are read back from the envelope.
type fedStore struct {
	client redis.UniversalClient
	keys   []string // hash, bytes
}

func newFedStore(client redis.UniversalClient, domain string) *fedStore {
	tag := "rmb:relay:fed:{" + strings.ToLower(domain) + "}"
	return &fedStore{client: client, keys: []string{tag + ":jobs", tag + ":bytes"}}
}

// fedStoreTimeout bounds one Redis call of the federation store.
const fedStoreTimeout = 5 * time.Second

var (
	// KEYS: hash, bytes. ARGV: id, job, max jobs, max bytes, key ttl ms.
	fedPushScript = redis.NewScript(`
local n = redis.call('HLEN', KEYS[1])
local b = tonumber(redis.call('GET', KEYS[2]) or '0')
local sz = string.len(ARGV[2])
if n >= tonumber(ARGV[3]) or b + sz > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], sz)
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1`)

	// KEYS: hash, bytes. ARGV: id.
	fedRemoveScript = redis.NewScript(`
local sz = redis.call('HSTRLEN', KEYS[1], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('DECRBY', KEYS[2], sz)
end
return 1`)
)

// errFedFull is the answer of a federation queue (memory or Redis) that
// holds its bound of jobs or bytes.
var errFedFull = errors.New("relay: federation queue is full")

func newJobID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func encodeFedJob(j *fedJob) string {
	n := 1 + binary.MaxVarintLen64
	for _, d := range j.relays {
		n += binary.MaxVarintLen64 + len(d)
	}
	b := make([]byte, 0, n+len(j.msg.Data))
	b = append(b, 1)
	b = binary.AppendUvarint(b, uint64(len(j.relays)))
	for _, d := range j.relays {
		b = binary.AppendUvarint(b, uint64(len(d)))
		b = append(b, d...)
	}
	return string(append(b, j.msg.Data...))
}

// decodeFedJob reads a job back; maxSize bounds the envelope.
func decodeFedJob(s string, maxSize int) (*fedJob, error) {
	b := []byte(s)
	if len(b) == 0 || b[0] != 1 {
		return nil, errors.New("unknown job version")
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > 64 {
		return nil, errors.New("bad relay count")
	}
	b = b[k:]
	relays := make([]string, 0, n)
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, errors.New("truncated relay")
		}
		relays = append(relays, string(b[k:k+int(l)]))
		b = b[k+int(l):]
	}
	if len(b) > maxSize {
		return nil, errors.New("envelope too large")
	}
	var rt envelope.Routing
	if err := envelope.ReadRouting(b, &rt); err != nil {
		return nil, err
	}
	return newFedJob(&rt, Message{Data: b, Deadline: deadline(&rt)}, relays), nil
}

// push stores j under a new id (set in j.id), unless Redis holds maxJobs
// jobs or maxBytes bytes already (errFedFull).
func (s *fedStore) push(ctx context.Context, j *fedJob, maxJobs int, maxBytes int64) error {
	ctx, cancel := context.WithTimeout(ctx, fedStoreTimeout)
	defer cancel()
	id := newJobID()
	ok, err := fedPushScript.Run(ctx, s.client, s.keys, id, encodeFedJob(j), maxJobs, maxBytes, keyTTL(j.msg.Deadline)).Int()
	if err != nil {
		return fmt.Errorf("relay: redis federation push: %w", err)
	}
	if ok == 0 {
		return errFedFull
	}
	j.id = id
	return nil
}

// remove deletes the job id.
func (s *fedStore) remove(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), fedStoreTimeout)
	defer cancel()
	if err := fedRemoveScript.Run(ctx, s.client, s.keys, id).Err(); err != nil {
		return fmt.Errorf("relay: redis federation remove: %w", err)
	}
	return nil
}

// load calls fn for every stored job (a previous incarnation's). A job that
// cannot be decoded is removed and reported with its error.
func (s *fedStore) load(ctx context.Context, maxSize int, fn func(j *fedJob, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, 10*fedStoreTimeout)
	defer cancel()
	var cursor uint64
	for {
		kv, next, err := s.client.HScan(ctx, s.keys[0], cursor, "", 64).Result()
		if err != nil {
			return fmt.Errorf("relay: redis federation load: %w", err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			j, err := decodeFedJob(kv[i+1], maxSize)
			if err != nil {
				s.remove(kv[i])
				fn(nil, err)
				continue
			}
			j.id = kv[i]
			fn(j, nil)
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// keyTTL is how long (ms) the federation keys must live for a job with
// this deadline: until the deadline plus keyGrace, and keyGrace at least.
func keyTTL(deadline time.Time) int64 {
	return max(time.Until(deadline)+keyGrace, keyGrace).Milliseconds()
}

// fedAdoptScript moves every job of another instance's hash into this
// one's and returns them (id, job, id, job, ...). KEYS: from hash, from
// bytes, to hash, to bytes. ARGV: the least key ttl ms.
var fedAdoptScript = redis.NewScript(`
local kv = redis.call('HGETALL', KEYS[1])
if #kv == 0 then return kv end
local sz = 0
for i = 1, #kv, 2 do
  redis.call('HSET', KEYS[3], kv[i], kv[i+1])
  sz = sz + string.len(kv[i+1])
end
redis.call('INCRBY', KEYS[4], sz)
local ttl = math.max(redis.call('PTTL', KEYS[1]), tonumber(ARGV[1]))
if redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
redis.call('DEL', KEYS[1], KEYS[2])
return kv`)

// adopt moves the jobs of from into s, atomically (one Lua script: the
// two hashes must be on one Redis, not on different Redis Cluster
// slots), and returns them.
func (s *fedStore) adopt(ctx context.Context, from *fedStore, maxSize int) ([]*fedJob, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*fedStoreTimeout)
	defer cancel()
	kv, err := fedAdoptScript.Run(ctx, s.client, append(append([]string{}, from.keys...), s.keys...), keyGrace.Milliseconds()).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("relay: redis federation adopt: %w", err)
	}
	var out []*fedJob
	for i := 0; i+1 < len(kv); i += 2 {
		j, err := decodeFedJob(kv[i+1], maxSize)
		if err != nil {
			s.remove(kv[i])
			continue
		}
		j.id = kv[i]
		out = append(out, j)
	}
	return out, nil
}
