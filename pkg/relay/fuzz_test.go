package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/vectors"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// staticDirectory is a fixed twin table. The fuzz target uses it instead of
// a registrar server so that one execution costs microseconds, not an HTTP
// round trip.
type staticDirectory map[uint32]*registrar.Twin

func (d staticDirectory) Twin(ctx context.Context, id uint32) (*registrar.Twin, error) {
	if t, ok := d[id]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("twin %d: %w", id, registrar.ErrNotFound)
}

// FuzzHandleFrame feeds arbitrary bytes as an inbound frame of a live
// session through the routing function. It must not panic, and every frame
// must be counted in.
func FuzzHandleFrame(f *testing.F) {
	id, err := identity.FromSeed(make([]byte, 32), identity.Ed25519)
	if err != nil {
		f.Fatal(err)
	}
	dir := staticDirectory{
		1: {ID: 1, PublicKey: id.PublicKey(), Relays: []string{"here.test"}},
		2: {ID: 2, PublicKey: id.PublicKey(), Relays: []string{"here.test"}},
		3: {ID: 3, PublicKey: id.PublicKey(), Relays: []string{"127.0.0.1:1"}}, // federated, refused
		4: {ID: 4, PublicKey: id.PublicKey()},                                  // no relays
	}
	rules, _ := ParseRules([]byte("- from: '*'\n  to: [1, 2, 3, 4]"))
	r, err := New(&Options{
		Domains: []string{"here.test"}, Directory: dir, SendQueueSize: 8,
		FederationScheme: "http", FederationQueueSize: 4, FederationWorkers: 1,
		RateLimit: &RateLimit{Messages: 1 << 30}, Policy: &Policy{Rules: rules},
		Store: NewMemStore(&StoreOptions{MaxMessages: 64}),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	s := r.newSession(SessionKey{Twin: 1, SID: "s"}, nil, "fuzz")
	if !r.register(s) {
		f.Fatal("register")
	}
	// A live destination session without a connection.
	r.register(r.newSession(SessionKey{Twin: 2}, nil, "fuzz"))

	add := func(e *envelope.Envelope) {
		e.Stamp(time.Now())
		e.Sign(id)
		b, _ := envelope.Marshal(e)
		f.Add(b)
	}
	for _, dst := range []uint32{1, 2, 3, 4, 5} {
		e := envelope.NewRequest("u", "cmd", []byte("x"), 60)
		e.Source = envelope.NewAddress(1, "s")
		e.Destination = envelope.NewAddress(dst, "")
		add(e)
	}
	ping := envelope.NewPing("p", 60)
	ping.Source = envelope.NewAddress(1, "s")
	add(ping)
	wrong := envelope.NewRequest("w", "cmd", nil, 60)
	wrong.Source = envelope.NewAddress(9, "")
	add(wrong)
	ff := envelope.NewRequest("ff", "cmd", nil, 60)
	ff.Source, ff.Destination = envelope.NewAddress(1, "s"), envelope.NewAddress(2, "gone")
	tags := "fail-fast"
	ff.Tags = &tags
	add(ff)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	for _, e := range vectors.Load(f).Envelopes {
		f.Add(vectors.Hex(f, e.EnvelopeHex))
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		before := r.counters.msgsIn.Load()
		r.handleFrame(s, append([]byte(nil), b...), nil)
		if r.counters.msgsIn.Load() != before+1 {
			t.Fatal("frame not counted")
		}
		// Keep the queues from filling up so that every path stays reachable.
		for range len(s.send) {
			<-s.send
		}
		r.store.(*MemStore).Sweep(time.Now().Add(time.Hour))
	})
}

// TestHandleFrameAllocs: routing to a live local session allocates nothing
// beyond the frame the connection already read.
func TestHandleFrameAllocs(t *testing.T) {
	id, _ := identity.FromSeed(make([]byte, 32), identity.Ed25519)
	r, err := New(&Options{Domains: []string{"here.test"}, Directory: staticDirectory{}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Shutdown(context.Background())
	src := r.newSession(SessionKey{Twin: 1, SID: "s"}, nil, "test")
	dst := r.newSession(SessionKey{Twin: 2, SID: "d"}, nil, "test")
	r.register(src)
	r.register(dst)
	dst.mu.Lock()
	dst.spilled = false // no send loop here to drain the (empty) store
	dst.mu.Unlock()
	e := envelope.NewRequest("u", "cmd", []byte("payload"), 60)
	e.Source, e.Destination = envelope.NewAddress(1, "s"), envelope.NewAddress(2, "d")
	e.Stamp(time.Now())
	e.Sign(id)
	b, _ := envelope.Marshal(e)
	allocs := testing.AllocsPerRun(1000, func() {
		r.handleFrame(src, b, nil)
		<-dst.send
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per routed frame", allocs)
	}
}
