package relay

import (
	"bytes"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// The replay guard forgets an entry at its deadline and never holds more
// than its bound, dropping the entries closest to their deadline first.
func TestReplayGuardBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	g := newReplayGuard(3)
	key := func(uid string) replayKey {
		rt := envelope.Routing{UID: []byte(uid), Kind: envelope.KindRequest}
		rt.Source.Twin, rt.Destination.Twin = 1, 2
		return replayKeyOf(&rt)
	}
	g.add(key("a"), now.Add(10*time.Second), now)
	g.add(key("b"), now.Add(30*time.Second), now)
	g.add(key("c"), now.Add(20*time.Second), now)
	if !g.seen(key("a"), now) || !g.seen(key("b"), now) || !g.seen(key("c"), now) {
		t.Fatal("recorded keys not seen")
	}
	g.add(key("d"), now.Add(40*time.Second), now) // full: "a" (earliest deadline) goes
	if g.seen(key("a"), now) || !g.seen(key("d"), now) || len(g.entries) != 3 || len(g.order) != 3 {
		t.Errorf("after overflow: a seen %v, d seen %v, %d entries, %d in heap", g.seen(key("a"), now), g.seen(key("d"), now), len(g.entries), len(g.order))
	}
	later := now.Add(25 * time.Second) // past c's deadline
	if g.seen(key("c"), later) {
		t.Error("c seen after its deadline")
	}
	g.add(key("e"), later.Add(time.Minute), later)
	if len(g.entries) != 3 || g.seen(key("c"), later) {
		t.Errorf("expired entries not swept: %d entries", len(g.entries))
	}
	// Same uid, other destination: another key.
	rt := envelope.Routing{UID: []byte("b"), Kind: envelope.KindRequest}
	rt.Source.Twin, rt.Destination.Twin = 1, 3
	if g.seen(replayKeyOf(&rt), now) {
		t.Error("same uid to another destination counted as a replay")
	}
}

// A request or an answer accepted before is delivered again at most
// maxRedeliveries times: a caller that lost an answer re-sends its
// request, and the destination peer re-sends the same signed answer.
func TestReplayGuardRedeliveries(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, kind := range []envelope.Kind{envelope.KindRequest, envelope.KindResponse, envelope.KindError} {
		g := newReplayGuard(8)
		rt := envelope.Routing{UID: []byte("u"), Kind: kind}
		k := replayKeyOf(&rt)
		if g.again(k) {
			t.Fatal("again for a key never recorded")
		}
		g.add(k, now.Add(time.Minute), now)
		for i := range maxRedeliveries {
			if !g.again(k) {
				t.Fatalf("kind %v: redelivery %d refused", kind, i+1)
			}
		}
		if g.again(k) {
			t.Errorf("kind %v: redelivery %d allowed, bound is %d", kind, maxRedeliveries+1, maxRedeliveries)
		}
		g.add(k, now.Add(time.Minute), now) // a second add does not reset the count
		if g.again(k) {
			t.Errorf("kind %v: add reset the redelivery count", kind)
		}
	}
}

// An answer federation delivered to a caller that died before reading it
// comes again when the answering peer sends it again (it does so from its
// cache when the restarted caller re-sends the request): the copy is
// delivered, not taken for a replay.
func TestFederatedAnswerSentAgainReachesRestartedCaller(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	ra := startRelay(t, reg, nil, lnA, nil)
	lnB.Close() // only its address is used
	answer := envelope.NewResponse("lost-with-the-caller", []byte("answer"), 60)
	answer.Source, answer.Destination = envelope.NewAddress(b.num, ""), envelope.NewAddress(a.num, "")
	answer.Stamp(time.Now())
	answer.Sign(b.id)
	body := marshal(t, answer)
	post := func() {
		t.Helper()
		resp, err := http.Post("http://"+dA+"/", "application/x-protobuf", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST: %d", resp.StatusCode)
		}
	}
	// The first copy goes to the caller's socket; the caller dies unread.
	dead := dialSilent(t, ra, a, "")
	ka := SessionKey{a.num, ""}
	waitSession(t, ra.Relay, ka, true)
	post()
	waitFor(t, 20*time.Second, func() error {
		if n := ra.counters.msgsOut.Load(); n == 0 {
			return errors.New("first copy not written yet")
		}
		return nil
	})
	dead.c.CloseNow()
	waitSession(t, ra.Relay, ka, false)
	ca := dial(t, ra, a, "")
	waitSession(t, ra.Relay, ka, true)
	post() // peer B's copy from its answer cache
	ca.expectPayload("answer")
	if n := dropped(ra.Relay, dropReplay); n != 0 {
		t.Errorf("%d copies counted as replays, want 0", n)
	}
}
