package relay

import (
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

// A request accepted before is delivered again at most maxRedeliveries
// times; responses never are.
func TestReplayGuardRedeliveries(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	g := newReplayGuard(8)
	rt := envelope.Routing{UID: []byte("u"), Kind: envelope.KindRequest}
	k := replayKeyOf(&rt)
	if g.again(k) {
		t.Fatal("again for a key never recorded")
	}
	g.add(k, now.Add(time.Minute), now)
	for i := range maxRedeliveries {
		if !g.again(k) {
			t.Fatalf("redelivery %d refused", i+1)
		}
	}
	if g.again(k) {
		t.Errorf("redelivery %d allowed, bound is %d", maxRedeliveries+1, maxRedeliveries)
	}
	g.add(k, now.Add(time.Minute), now) // a second add does not reset the count
	if g.again(k) {
		t.Error("add reset the redelivery count")
	}
}
