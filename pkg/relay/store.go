package relay

import (
	"context"
	"errors"
	"fmt"
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
// message or byte cap. ErrTwinQueueFull and ErrStoreFull wrap it.
var ErrQueueFull = errors.New("relay: session queue is full")

// ErrTwinQueueFull is returned by Store.Push when the queues of all the
// twin's sessions together are at the twin's message or byte cap.
var ErrTwinQueueFull = fmt.Errorf("%w (the twin's sessions together are at their cap)", ErrQueueFull)

// ErrStoreFull is returned by Store.Push when the store as a whole is at
// its byte cap.
var ErrStoreFull = fmt.Errorf("%w (the store is at its total cap)", ErrQueueFull)

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
	// MaxTwinMessages and MaxTwinBytes cap what all sessions of one twin
	// hold together, session ids that never connected included: a sender
	// cannot multiply the per-session caps by making up session ids.
	// Defaults 10,000 messages and 32 MiB.
	MaxTwinMessages int
	MaxTwinBytes    int64
	// MaxTotalBytes caps the whole store. The memory store counts every
	// envelope as its size plus MemOverhead bytes of bookkeeping. Default
	// 512 MiB. A RedisStore on a Redis Cluster cannot keep a total (its
	// keys live in many slots): bound it with the cluster's maxmemory.
	MaxTotalBytes int64
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
	if s.MaxTwinMessages <= 0 {
		s.MaxTwinMessages = 10000
	}
	if s.MaxTwinBytes <= 0 {
		s.MaxTwinBytes = 32 << 20
	}
	if s.MaxTotalBytes <= 0 {
		s.MaxTotalBytes = 512 << 20
	}
	if s.Prefix == "" {
		s.Prefix = "rmb:relay:"
	}
	return s
}

// MemOverhead is what the memory store counts per envelope, beyond its
// bytes, against MaxTotalBytes: its slot in the queue, the slice header and
// the allocation, so that a flood of tiny envelopes is bounded too.
const MemOverhead = 128

// MemStore is the in-memory Store: queued messages are lost when the process
// ends. Expired messages are dropped on Pop and by Sweep, which the relay
// calls periodically.
type MemStore struct {
	opts StoreOptions

	mu     sync.Mutex // guards the following
	queues map[SessionKey]*memQueue
	twins  map[uint32]*memUsage // what each twin's queues hold together
	total  int64                // bytes of all queues, MemOverhead included
}

type memQueue struct {
	msgs  []Message
	bytes int64
}

type memUsage struct {
	msgs  int
	bytes int64
}

// account adds (sign 1) or removes (sign -1) msgs to the twin's and the
// store's totals; s.mu is held.
func (s *MemStore) account(twin uint32, sign int, msgs ...Message) {
	u := s.twins[twin]
	if u == nil {
		u = new(memUsage)
		s.twins[twin] = u
	}
	for _, m := range msgs {
		u.msgs += sign
		u.bytes += int64(sign * len(m.Data))
		s.total += int64(sign * (len(m.Data) + MemOverhead))
	}
	if u.msgs <= 0 {
		delete(s.twins, twin)
	}
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store (opts may be nil).
func NewMemStore(opts *StoreOptions) *MemStore {
	return &MemStore{opts: opts.withDefaults(), queues: make(map[SessionKey]*memQueue), twins: make(map[uint32]*memUsage)}
}

// Push implements Store.
func (s *MemStore) Push(ctx context.Context, k SessionKey, m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := int64(len(m.Data))
	q := s.queues[k]
	if q == nil {
		q = new(memQueue) // put in the map only once accepted
	}
	u := s.twins[k.Twin]
	if u == nil {
		u = new(memUsage)
	}
	switch {
	case len(q.msgs) >= s.opts.MaxMessages || q.bytes+size > s.opts.MaxBytes:
		return ErrQueueFull
	case u.msgs >= s.opts.MaxTwinMessages || u.bytes+size > s.opts.MaxTwinBytes:
		return ErrTwinQueueFull
	case s.total+size+MemOverhead > s.opts.MaxTotalBytes:
		return ErrStoreFull
	}
	s.queues[k] = q
	q.msgs = append(q.msgs, m)
	q.bytes += size
	s.account(k.Twin, 1, m)
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
	s.account(k.Twin, -1, q.msgs[:n]...)
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
	s.account(k.Twin, 1, msgs...)
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
				s.account(k.Twin, -1, m)
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

// Usage returns what the store holds: envelopes, their bytes plus
// MemOverhead each, and the number of twins with queued envelopes.
func (s *MemStore) Usage() (msgs int, bytes int64, twins int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.twins {
		msgs += u.msgs
	}
	return msgs, s.total, len(s.twins)
}

// sweeper is implemented by stores that need a periodic expiry pass.
type sweeper interface {
	Sweep(now time.Time) int
}
