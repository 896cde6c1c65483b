package relay

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// SessionKey names a session: a twin and its session id ("" is the twin's
// default session, the one the reference peer uses).
type SessionKey struct {
	Twin uint32
	SID  string
}

// String is the address text form, "<twin>" or "<twin>:<sid>".
func (k SessionKey) String() string {
	s := strconv.FormatUint(uint64(k.Twin), 10)
	if k.SID != "" {
		s += ":" + k.SID
	}
	return s
}

// Message is one queued envelope: its serialized bytes and the absolute time
// its TTL runs out.
type Message struct {
	Data     []byte
	Deadline time.Time
}

// ErrQueueFull is returned by Store.Push when the session's queue is at its
// message or byte cap.
var ErrQueueFull = errors.New("relay: session queue is full")

// Store keeps envelopes for sessions that are not connected (or whose send
// queue is full) until they can be delivered: store and forward.
//
// Every method touches exactly one session's queue, so an implementation can
// shard by session (Redis Cluster: one hash slot per session). Each queue is
// FIFO. Implementations must be safe for concurrent use.
type Store interface {
	// Push appends m to the session's queue, or returns ErrQueueFull when
	// the queue is at its cap.
	Push(ctx context.Context, k SessionKey, m Message) error
	// Pop removes up to n of the oldest messages and returns those whose
	// deadline is after now, in order, together with how many expired ones
	// it discarded.
	Pop(ctx context.Context, k SessionKey, n int, now time.Time) (msgs []Message, expired int, err error)
	// Requeue puts msgs back at the front of the queue, in order, ignoring
	// the caps; it returns messages popped but not delivered.
	Requeue(ctx context.Context, k SessionKey, msgs []Message) error
	// Len is the number of queued messages, expired ones included.
	Len(ctx context.Context, k SessionKey) (int, error)
}

// StoreOptions bound the per-session queues of a Store. Nil or zero fields
// mean the defaults.
type StoreOptions struct {
	// MaxMessages caps each session's queue. Default 10,000.
	MaxMessages int
	// MaxBytes caps the bytes queued per session. Default 64 MiB.
	MaxBytes int64
	// Prefix is put before every Redis key (RedisStore only). Default
	// "rmb:relay:".
	Prefix string
}

func (o *StoreOptions) withDefaults() StoreOptions {
	var s StoreOptions
	if o != nil {
		s = *o
	}
	if s.MaxMessages <= 0 {
		s.MaxMessages = 10000
	}
	if s.MaxBytes <= 0 {
		s.MaxBytes = 64 << 20
	}
	if s.Prefix == "" {
		s.Prefix = "rmb:relay:"
	}
	return s
}

// MemStore is the in-memory Store: queued messages are lost when the process
// ends. Expired messages are dropped on Pop and by Sweep, which the relay
// calls periodically.
type MemStore struct {
	opts StoreOptions

	mu     sync.Mutex // guards the following
	queues map[SessionKey]*memQueue
}

type memQueue struct {
	msgs  []Message
	bytes int64
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store (opts may be nil).
func NewMemStore(opts *StoreOptions) *MemStore {
	return &MemStore{opts: opts.withDefaults(), queues: make(map[SessionKey]*memQueue)}
}

// Push implements Store.
func (s *MemStore) Push(ctx context.Context, k SessionKey, m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[k]
	if q == nil {
		q = new(memQueue)
		s.queues[k] = q
	}
	if len(q.msgs) >= s.opts.MaxMessages || q.bytes+int64(len(m.Data)) > s.opts.MaxBytes {
		return ErrQueueFull
	}
	q.msgs = append(q.msgs, m)
	q.bytes += int64(len(m.Data))
	return nil
}

// Pop implements Store.
func (s *MemStore) Pop(ctx context.Context, k SessionKey, n int, now time.Time) ([]Message, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[k]
	if q == nil {
		return nil, 0, nil
	}
	n = min(n, len(q.msgs))
	var out []Message
	expired := 0
	for _, m := range q.msgs[:n] {
		q.bytes -= int64(len(m.Data))
		if m.Deadline.After(now) {
			out = append(out, m)
		} else {
			expired++
		}
	}
	clear(q.msgs[:n])
	q.msgs = q.msgs[n:]
	if len(q.msgs) == 0 {
		delete(s.queues, k)
	}
	return out, expired, nil
}

// Requeue implements Store.
func (s *MemStore) Requeue(ctx context.Context, k SessionKey, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queues[k]
	if q == nil {
		q = new(memQueue)
		s.queues[k] = q
	}
	q.msgs = append(append(make([]Message, 0, len(msgs)+len(q.msgs)), msgs...), q.msgs...)
	for _, m := range msgs {
		q.bytes += int64(len(m.Data))
	}
	return nil
}

// Len implements Store.
func (s *MemStore) Len(ctx context.Context, k SessionKey) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.queues[k]; q != nil {
		return len(q.msgs), nil
	}
	return 0, nil
}

// Sweep drops every expired message of every queue and returns how many it
// dropped.
func (s *MemStore) Sweep(now time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, q := range s.queues {
		kept := q.msgs[:0]
		for _, m := range q.msgs {
			if m.Deadline.After(now) {
				kept = append(kept, m)
			} else {
				q.bytes -= int64(len(m.Data))
				n++
			}
		}
		clear(q.msgs[len(kept):])
		q.msgs = kept
		if len(q.msgs) == 0 {
			delete(s.queues, k)
		}
	}
	return n
}

// sweeper is implemented by stores that need a periodic expiry pass.
type sweeper interface {
	Sweep(now time.Time) int
}
