package relay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
)

// TestStoreTwinAndTotalCaps: made-up session ids do not multiply the
// per-session caps (the twin's sessions share one), and the store as a
// whole has a byte cap; popping frees both.
func TestStoreTwinAndTotalCaps(t *testing.T) {
	srv := redistest.Start(t, nil)
	for _, tc := range []struct {
		name string
		// What a 10-byte envelope counts against the twin's and the
		// total cap: Redis keeps the 8-byte deadline with it, the memory
		// store counts its bookkeeping in the total.
		unit, totalUnit int64
		new             func(*StoreOptions) Store
	}{
		{"mem", 10, 10 + MemOverhead, func(o *StoreOptions) Store { return NewMemStore(o) }},
		{"redis", 18, 18, func(o *StoreOptions) Store {
			o.Prefix = fmt.Sprintf("caps%d:", time.Now().UnixNano())
			return newRedisStore(t, srv, o)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			now := time.Now()
			m := Message{Data: []byte("0123456789"), Deadline: now.Add(time.Minute)}
			s := tc.new(&StoreOptions{MaxMessages: 100, MaxBytes: 1000, MaxTwinMessages: 3, MaxTwinBytes: 5 * tc.unit / 2, MaxTotalBytes: 1 << 20})
			for i := range 2 {
				if err := s.Push(ctx, SessionKey{Twin: 7, SID: fmt.Sprint("made-up-", i)}, m); err != nil {
					t.Fatal(err)
				}
			}
			// Bytes: 3 units > 2.5.
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "made-up-x"}, m); !errors.Is(err, ErrTwinQueueFull) || !errors.Is(err, ErrQueueFull) {
				t.Fatalf("third envelope of twin 7 over its byte cap: %v", err)
			}
			if err := s.Push(ctx, SessionKey{Twin: 8}, m); err != nil {
				t.Fatalf("another twin: %v", err)
			}
			if got, _, _ := s.Pop(ctx, SessionKey{Twin: 7, SID: "made-up-0"}, 10, now); len(got) != 1 {
				t.Fatalf("pop: %v", got)
			}
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "made-up-x"}, m); err != nil {
				t.Fatalf("after a pop the twin has room again: %v", err)
			}

			// Messages: three tiny ones, the fourth refused.
			s = tc.new(&StoreOptions{MaxTwinMessages: 3, MaxTotalBytes: 1 << 20})
			tiny := Message{Data: []byte("x"), Deadline: now.Add(time.Minute)}
			for i := range 3 {
				if err := s.Push(ctx, SessionKey{Twin: 7, SID: fmt.Sprint(i)}, tiny); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "3"}, tiny); !errors.Is(err, ErrTwinQueueFull) {
				t.Fatalf("fourth envelope of twin 7 over its message cap: %v", err)
			}

			// Total: three envelopes of three twins, the fourth twin refused.
			s = tc.new(&StoreOptions{MaxTotalBytes: 3 * tc.totalUnit})
			for i := range 3 {
				if err := s.Push(ctx, SessionKey{Twin: uint32(10 + i)}, m); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Push(ctx, SessionKey{Twin: 20}, m); !errors.Is(err, ErrStoreFull) || !errors.Is(err, ErrQueueFull) {
				t.Fatalf("push over the total cap: %v", err)
			}
			s.Pop(ctx, SessionKey{Twin: 11}, 10, now)
			if err := s.Push(ctx, SessionKey{Twin: 20}, m); err != nil {
				t.Fatalf("after a pop the store has room again: %v", err)
			}
			if err := s.Requeue(ctx, SessionKey{Twin: 11}, []Message{m}); err != nil {
				t.Fatalf("requeue ignores the caps: %v", err)
			}
		})
	}
}

// TestRedisStoreForgetsExpiredQueues: the queues whose keys Redis expired
// (a twin that never came back) no longer count against the twin's and the
// store's caps.
func TestRedisStoreForgetsExpiredQueues(t *testing.T) {
	srv := redistest.Start(t, nil)
	ctx := context.Background()
	s := newRedisStore(t, srv, &StoreOptions{MaxTwinMessages: 2, MaxTotalBytes: 3 * 18})
	m := Message{Data: []byte("0123456789"), Deadline: time.Now().Add(time.Minute)}
	for _, k := range []SessionKey{{Twin: 7, SID: "a"}, {Twin: 7, SID: "b"}, {Twin: 9}} {
		if err := s.Push(ctx, k, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Push(ctx, SessionKey{Twin: 7, SID: "c"}, m); !errors.Is(err, ErrTwinQueueFull) {
		t.Fatalf("twin 7 full: %v", err)
	}
	// Let the keys of 7:a and of twin 9 expire, as Redis would once their
	// time came: the key goes, the index still says when.
	past := time.Now().Add(-5 * time.Second).UnixMilli()
	expire := func(k SessionKey) {
		keys, _, sid := s.keys(k)
		s.client.PExpireAt(ctx, keys[0], time.UnixMilli(past))
		s.client.ZAdd(ctx, keys[2], redisZ(past, sid))
		if k.Twin == 9 {
			s.client.Del(ctx, keys[1], keys[2])
			s.client.ZAdd(ctx, keys[4], redisZ(past, "9"))
		}
	}
	expire(SessionKey{Twin: 7, SID: "a"})
	expire(SessionKey{Twin: 9})
	if err := s.Push(ctx, SessionKey{Twin: 7, SID: "c"}, m); err != nil {
		t.Fatalf("twin 7 after its queue a expired: %v", err)
	}
	keys, _, _ := s.keys(SessionKey{Twin: 7})
	total, _ := s.client.HGet(ctx, keys[3], "b").Int()
	n, _ := s.client.HGet(ctx, keys[1], "n").Int()
	if total != 2*18 || n != 2 {
		t.Fatalf("after expiry: store total %d bytes (want 36), twin 7 %d messages (want 2)", total, n)
	}
}

// TestDeadlineTooFar: an envelope whose deadline lies beyond now + MaxTTL +
// the clock skew is refused on the WebSocket path as on federation, with
// an error envelope that says why.
func TestDeadlineTooFar(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	far := request(t, a, "", b.num, "", "far", 1<<40)
	ca.sendRaw(marshal(t, far))
	ca.expectError(far.Uid, msgFuture)
	edge := request(t, a, "", b.num, "", "edge", envelope.MaxTTL+30)
	ca.sendRaw(marshal(t, edge))
	if n := dropped(tr.Relay, dropFuture); n != 1 {
		t.Fatalf("future drops = %d, want 1", n)
	}
	cb := dial(t, tr, b, "")
	cb.expectPayload("edge") // within the skew: delivered
	cb.expectNothing(100 * time.Millisecond)
}

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}
