package peer_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
)

// Peer.Broadcast reaches every live session of a twin through a real
// relay (destination connection "*"), and the caller gets one answer.
func TestBroadcastThroughRelay(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	b := s.newRawTwin(false, 0)
	// b's second session, "s2", on its own connection.
	token, err := identity.NewToken(b.id, b.twin, "s2", time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.Dial(context.Background(), s.relays[0].url+"/?"+token, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	b2 := &rawTwin{t: t, id: b.id, twin: b.twin, conn: conn, stats: b.stats}
	waitFor(t, 20*time.Second, func() error {
		if n := s.relays[0].r.Stats().Sessions; n < 3 {
			return fmt.Errorf("%d sessions on the relay, want a's and b's two", n)
		}
		return nil
	})

	type result struct {
		rs  []peer.Response
		err error
	}
	done := make(chan result, 1)
	go func() {
		rs, err := a.Broadcast(context.Background(), b.twin, "hello.all", []byte("hi"), &peer.CallOptions{TTL: 30 * time.Second})
		done <- result{rs, err}
	}()
	var uid string
	for i, c := range []*rawTwin{b, b2} {
		env := c.recv(20 * time.Second)
		if env.GetDestination().GetConnection() != peer.BroadcastSession || env.GetDestination().GetTwin() != b.twin {
			t.Fatalf("session %d got destination %v, want twin %d connection *", i, env.GetDestination(), b.twin)
		}
		if req := env.GetRequest(); req == nil || req.GetCommand() != "hello.all" || string(env.GetPlain()) != "hi" {
			t.Fatalf("session %d got %v", i, env)
		}
		if i == 1 && env.Uid != uid {
			t.Fatalf("the copies have uids %q and %q, want one", uid, env.Uid)
		}
		uid = env.Uid
	}
	answer := envelope.NewResponse(uid, []byte("hello back"), 60)
	answer.Source = envelope.NewAddress(b.twin, "s2")
	answer.Destination = envelope.NewAddress(a.Twin(), "")
	answer.Stamp(time.Now())
	answer.Sign(b.id)
	b2.send(answer)
	r := <-done
	if r.err != nil || len(r.rs) != 1 || r.rs[0].Err != nil || string(r.rs[0].Data) != "hello back" {
		t.Fatalf("want one answer: %v %+v", r.err, r.rs)
	}
}
