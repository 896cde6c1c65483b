package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// sendFailFast sends a fail-fast request from c to dst:dsid.
func sendFailFast(t *testing.T, c *client, dst uint32, dsid, payload string) *envelope.Envelope {
	t.Helper()
	e := request(t, c.tw, c.sid, dst, dsid, payload, 60)
	tags := envelope.TagFailFast
	e.Tags = &tags
	e.Stamp(time.Now())
	e.Sign(c.tw.id)
	c.sendRaw(marshal(t, e))
	return e
}

// An envelope to connection "*" reaches every live session of the twin
// once; with none live it is stored for the twin's session without id (or
// answered "destination offline" when fail-fast); "*" is no session id.
func TestBroadcastLocal(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	var bs []*client
	for _, sid := range []string{"", "x", "y"} {
		bs = append(bs, dial(t, tr, b, sid))
		waitSession(t, tr.Relay, SessionKey{Twin: b.num, SID: sid}, true)
	}
	ca.send(b.num, "*", "all")
	for _, c := range bs {
		e := c.expectPayload("all")
		if e.GetDestination().GetConnection() != "*" {
			t.Fatalf("destination %v, want connection *", e.GetDestination())
		}
		c.expectNothing(100 * time.Millisecond)
	}
	if n := tr.counters.broadcastCopies.Load(); n != 3 {
		t.Fatalf("%d copies counted, want 3", n)
	}
	if n := tr.counters.routed[routedBroadcast].Load(); n != 1 {
		t.Fatalf("routed broadcast %d, want 1", n)
	}

	// Nobody live: fail-fast is answered, the rest stored for sid "".
	for i, c := range bs {
		c.c.Close(websocket.StatusNormalClosure, "")
		waitSession(t, tr.Relay, SessionKey{Twin: b.num, SID: []string{"", "x", "y"}[i]}, false)
	}
	e := sendFailFast(t, ca, b.num, "*", "fast")
	ca.expectError(e.Uid, msgOffline)
	ca.send(b.num, "*", "later")
	waitFor(t, 20*time.Second, func() error {
		if n := tr.counters.routed[routedStored].Load(); n != 1 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	x := dial(t, tr, b, "x")
	waitSession(t, tr.Relay, SessionKey{Twin: b.num, SID: "x"}, true)
	nb := dial(t, tr, b, "")
	nb.expectPayload("later")
	x.expectNothing(200 * time.Millisecond)

	// "*" is not a session id.
	code, body, _ := dialStatus(t, tr, b, "*")
	if code != 400 {
		t.Fatalf("session id *: %d %s, want 400", code, body)
	}
}

// In a cluster the copies go to the twin's sessions on every instance,
// each once; with none live anywhere the envelope is stored and delivered
// to the session without id on whichever instance it connects to.
func TestClusterBroadcast(t *testing.T) {
	c := startCluster(t)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	sids := []string{"", "x", "y", "z"}
	var bs []*client
	for i, sid := range sids {
		tr := c.relays[(i+1)%3] // i1, i2, i0, i1
		bs = append(bs, dial(t, tr, btw, sid))
		c.waitHeld(t, SessionKey{Twin: btw.num, SID: sid}, tr.opts.Instance)
	}
	a.send(btw.num, "*", "all")
	for _, cl := range bs {
		recvPayload(t, cl, "all")
	}
	for _, cl := range bs {
		cl.expectNothing(100 * time.Millisecond)
	}
	var copies uint64
	for _, r := range c.relays {
		copies += r.counters.broadcastCopies.Load()
	}
	if copies != 4 {
		t.Fatalf("%d copies counted, want 4", copies)
	}

	for i, cl := range bs {
		cl.c.Close(websocket.StatusNormalClosure, "")
		waitSession(t, c.relays[(i+1)%3].Relay, SessionKey{Twin: btw.num, SID: sids[i]}, false)
	}
	// Nobody holds a session of the twin: no responders (or, while the
	// unsubscribes spread over the routes, no answer): stored.
	a.send(btw.num, "*", "later")
	waitFor(t, 30*time.Second, func() error {
		if n := c.relays[0].counters.routed[routedStored].Load(); n != 1 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	nb := dial(t, c.relays[2], btw, "")
	recvPayload(t, nb, "later")
	nb.expectNothing(200 * time.Millisecond)
}

// Federation passes an envelope to "*" unchanged to the twin's relay,
// which copies it to each session there; with none live it is stored for
// the session without id.
func TestBroadcastFederated(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	ra := startRelay(t, reg, nil, lnA, nil)
	rb := startRelay(t, reg, nil, lnB, nil)
	ca := dial(t, ra, a, "")
	var bs []*client
	for _, sid := range []string{"", "x"} {
		bs = append(bs, dial(t, rb, b, sid))
		waitSession(t, rb.Relay, SessionKey{Twin: b.num, SID: sid}, true)
	}
	sent := ca.send(b.num, "*", "far")
	for _, c := range bs {
		got := c.expectPayload("far")
		if err := got.Verify(a.id.PublicKey()); err != nil || got.Uid != sent.Uid {
			t.Fatalf("copy changed on the way: %v", err)
		}
		c.expectNothing(100 * time.Millisecond)
	}
	if n := rb.counters.broadcastCopies.Load(); n != 2 {
		t.Fatalf("%d copies on B, want 2", n)
	}
	for i, c := range bs {
		c.c.Close(websocket.StatusNormalClosure, "")
		waitSession(t, rb.Relay, SessionKey{Twin: b.num, SID: []string{"", "x"}[i]}, false)
	}
	ca.send(b.num, "*", "kept")
	waitFor(t, 20*time.Second, func() error {
		if n := rb.counters.routed[routedStored].Load(); n != 1 {
			return fmt.Errorf("%d stored on B", n)
		}
		return nil
	})
	recvPayload(t, dial(t, rb, b, ""), "kept")
}
