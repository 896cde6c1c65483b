package relay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
)

func newRedisStore(t testing.TB, srv *redistest.Server, opts *StoreOptions) *RedisStore {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { c.Close() })
	return NewRedisStore(c, opts)
}

func TestStores(t *testing.T) {
	srv := redistest.Start(t, nil)
	for _, tc := range []struct {
		name string
		new  func(*StoreOptions) Store
	}{
		{"mem", func(o *StoreOptions) Store { return NewMemStore(o) }},
		{"redis", func(o *StoreOptions) Store {
			o.Prefix = fmt.Sprintf("test%d:", time.Now().UnixNano())
			return newRedisStore(t, srv, o)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := tc.new(&StoreOptions{MaxMessages: 5, MaxBytes: 100})
			now := time.Now()
			k := SessionKey{Twin: 7, SID: "a{b}c"}
			other := SessionKey{Twin: 7}
			msg := func(i int, ttl time.Duration) Message {
				return Message{Data: fmt.Appendf(nil, "m%d", i), Deadline: now.Add(ttl)}
			}
			for i := range 5 {
				ttl := time.Minute
				if i == 1 {
					ttl = -time.Second // already expired when popped
				}
				if err := s.Push(ctx, k, msg(i, ttl)); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Push(ctx, k, msg(5, time.Minute)); !errors.Is(err, ErrQueueFull) {
				t.Fatalf("push over the count cap: %v", err)
			}
			if err := s.Push(ctx, other, Message{Data: make([]byte, 101), Deadline: now.Add(time.Minute)}); !errors.Is(err, ErrQueueFull) {
				t.Fatalf("push over the byte cap: %v", err)
			}
			if err := s.Push(ctx, other, msg(100, time.Minute)); err != nil {
				t.Fatal(err)
			}
			if n, _ := s.Len(ctx, k); n != 5 {
				t.Fatalf("len %d", n)
			}
			got, expired, err := s.Pop(ctx, k, 3, now)
			if err != nil || expired != 1 || len(got) != 2 || string(got[0].Data) != "m0" || string(got[1].Data) != "m2" {
				t.Fatalf("pop: %q expired %d err %v", got, expired, err)
			}
			if got[0].Deadline.Unix() != now.Add(time.Minute).Unix() {
				t.Fatalf("deadline %v", got[0].Deadline)
			}
			// Requeue puts messages back in front, in order.
			if err := s.Requeue(ctx, k, got); err != nil {
				t.Fatal(err)
			}
			got, _, _ = s.Pop(ctx, k, 10, now)
			var names []string
			for _, m := range got {
				names = append(names, string(m.Data))
			}
			if fmt.Sprint(names) != "[m0 m2 m3 m4]" {
				t.Fatalf("after requeue: %v", names)
			}
			if n, _ := s.Len(ctx, k); n != 0 {
				t.Fatalf("len %d after draining", n)
			}
			// The caps are free again.
			for i := range 5 {
				if err := s.Push(ctx, k, msg(i, time.Minute)); err != nil {
					t.Fatalf("push %d after draining: %v", i, err)
				}
			}
			got, _, _ = s.Pop(ctx, other, 10, now)
			if len(got) != 1 || string(got[0].Data) != "m100" {
				t.Fatalf("other session: %q", got)
			}
			if ms, ok := s.(*MemStore); ok {
				if n := ms.Sweep(now.Add(2 * time.Minute)); n != 5 {
					t.Fatalf("sweep dropped %d", n)
				}
			}
		})
	}
}

// TestRedisRestart: envelopes queued for an offline twin survive a restart
// of both the relay and redis.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t, &redistest.Options{AOF: true})
	reg := startRegistrar(t)
	const domain = "relay.test"
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	opts := func() *Options {
		return &Options{Domains: []string{domain}, Store: newRedisStore(t, srv, nil)}
	}
	r1 := startRelay(t, reg, opts(), nil, nil)
	ca := dial(t, r1, a, "")
	for i := range 30 {
		ca.send(b.num, "", fmt.Sprint("q", i))
	}
	waitFor(t, 20*time.Second, func() error {
		if n := r1.counters.routed[routedStored].Load(); n != 30 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	r1.srv.Close()
	srv.Kill()
	srv.Restart(t)

	r2 := startRelay(t, reg, opts(), nil, nil)
	cb := dial(t, r2, b, "")
	for i := range 30 {
		cb.expectPayload(fmt.Sprint("q", i))
	}
	cb.expectNothing(50 * time.Millisecond)
}
