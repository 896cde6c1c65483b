package peer

import (
	"context"
	"slices"
	"testing"
	"time"
)

// The scan takes an entry only when two consecutive scans saw it unheld,
// counts identical raw values one by one, hands entries over oldest first
// and lets go of them once their LREM ran.
func TestScanTakesEntriesUnheldTwice(t *testing.T) {
	p, rdb := redisPeer(t, 100)
	ctx := context.Background()
	h := p.held[LocalProcessing]
	// Oldest on the right, as popLoop's moves leave them.
	if err := rdb.LPush(ctx, LocalProcessing, "a", "b", "a", "c").Err(); err != nil {
		t.Fatal(err)
	}
	h.add("a", "c") // a worker has one "a" and the "c"
	sc := &scanner{processing: LocalProcessing, held: h}
	scan := func() []string {
		t.Helper()
		got, err := p.scan(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := scan(); len(got) != 0 {
		t.Fatalf("first sighting took %q", got)
	}
	if !sc.next.Before(time.Now().Add(confirmDelay + time.Second)) {
		t.Fatalf("no prompt second scan after a sighting: next in %v", time.Until(sc.next))
	}
	if got := scan(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("second scan took %q, want the unheld a and b, oldest first", got)
	}
	if n := h.count(); n != 4 {
		t.Fatalf("%d held, want 4", n)
	}
	// Everything is held now.
	for range 2 {
		if got := scan(); len(got) != 0 {
			t.Fatalf("took held entries %q", got)
		}
	}
	// A finished entry: LREM, then the hold goes.
	p.finish(LocalProcessing, "c", "")
	waitUntil(t, func() bool { return h.count() == 3 })
	if n := rdb.LLen(ctx, LocalProcessing).Val(); n != 3 {
		t.Fatalf("%d in processing after the LREM, want 3", n)
	}
	// A worker that gives up an entry (the peer stops) leaves it in the
	// list; unheld, it is taken again after two scans.
	h.release("b")
	if got := scan(); len(got) != 0 {
		t.Fatalf("first sighting took %q", got)
	}
	if got := scan(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("took %q, want b", got)
	}
	// An entry that vanished between two sightings is not taken.
	h.release("b")
	scan()
	rdb.LRem(ctx, LocalProcessing, 1, "b")
	if got := scan(); len(got) != 0 {
		t.Fatalf("took %q, which is gone", got)
	}
	// The first scan of a run takes every unheld entry at once.
	rdb.LPush(ctx, LocalProcessing, "d")
	sc2 := &scanner{processing: LocalProcessing, held: h, first: true}
	if got, err := p.scan(ctx, sc2); err != nil || !slices.Equal(got, []string{"d"}) {
		t.Fatalf("first scan took %q, %v; want d", got, err)
	}
}

func waitUntil(t *testing.T, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !f(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
