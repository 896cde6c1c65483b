package peer

import (
	"context"
	"crypto/rand"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// An envelope whose destination connection is "*" (a broadcast to every
// session of the twin) is accepted and handled like any other; one for
// another twin is not.
func TestTopicBroadcastAccepted(t *testing.T) {
	srv := httptest.NewServer(registrar.NewServer(&registrar.Options{}).Handler())
	t.Cleanup(srv.Close)
	reg := registrar.NewClient(srv.URL, nil)
	newID := func() *identity.Identity {
		seed := make([]byte, 32)
		rand.Read(seed)
		id, err := identity.FromSeed(seed, identity.Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srcID := newID()
	src, err := reg.Register(ctx, srcID, []string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(&Options{Identity: newID(), Relays: []string{"ws://127.0.0.1:1"}, Registrar: reg})
	if err != nil {
		t.Fatal(err)
	}
	p.twin.Store(src.ID + 1000)
	got := make(chan *Request, 2)
	p.Handle("hello", func(_ context.Context, r *Request) ([]byte, error) {
		got <- r
		return nil, nil
	})
	for _, dst := range []*envelope.Address{envelope.NewAddress(p.Twin(), BroadcastSession), envelope.NewAddress(p.Twin()+1, BroadcastSession)} {
		env := envelope.NewRequest("uid-"+dst.String(), "hello", []byte("hi"), 2)
		env.Source = envelope.NewAddress(src.ID, "")
		env.Destination = dst
		env.Stamp(time.Now())
		env.Sign(srcID)
		b, err := envelope.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		p.handleEnvelope(ctx, b, false)
	}
	select {
	case r := <-got:
		if r.Source != src.ID || string(r.Data) != "hi" {
			t.Errorf("request %+v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("broadcast request not handled")
	}
	select {
	case r := <-got:
		t.Errorf("request for another twin handled: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := p.Broadcast(ctx, 0, "x", nil, nil); err == nil {
		t.Error("broadcast to twin 0 accepted")
	}
}
