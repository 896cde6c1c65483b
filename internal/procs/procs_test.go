package procs

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// The controller goes up after two busy samples at one P and down after
// Quiet idle samples in a row; a sample in between starts the count again.
func TestControllerSteps(t *testing.T) {
	c := &controller{max: 4, cur: 1, opts: Options{High: 0.8, Low: 0.5, Quiet: 3}}
	for i, tc := range []struct {
		use  float64
		want int
		ch   bool
	}{
		{0.9, 1, false}, // one busy sample is not enough
		{0.3, 1, false}, // and an idle one starts over
		{0.9, 1, false},
		{0.95, 4, true}, // two in a row: all Ps
		{0.4, 4, false}, // idle 1
		{0.6, 4, false}, // busy enough: starts over
		{0.4, 4, false},
		{0.1, 4, false},
		{0.2, 1, true},  // three idle in a row: one P
		{0.8, 1, false}, // not above High
	} {
		n, ch := c.step(tc.use)
		if n != tc.want || ch != tc.ch {
			t.Fatalf("step %d (%.2f cores): %d, %v; want %d, %v", i, tc.use, n, ch, tc.want, tc.ch)
		}
	}
}

// Adapt starts at one P, gives all back when the process keeps a core
// busy, and restores GOMAXPROCS when it stops.
func TestAdaptFollowsLoad(t *testing.T) {
	max := runtime.GOMAXPROCS(0)
	if max < 2 {
		t.Fatalf("this test needs GOMAXPROCS >= 2 (2 CPUs or more), have %d", max)
	}
	var now atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// High is low so that a spinner sharing a loaded machine's cores
		// with other processes still counts as busy.
		Adapt(ctx, Options{Every: 20 * time.Millisecond, High: 0.25, Quiet: 5, OnChange: func(n int) { now.Store(int32(n)) }})
	}()
	waitFor(t, "one P at start", func() bool { return now.Load() == 1 && runtime.GOMAXPROCS(0) == 1 })

	spin, stopSpin := context.WithCancel(context.Background())
	go func() {
		for spin.Err() == nil {
		}
	}()
	waitFor(t, "all Ps under load", func() bool { return int(now.Load()) == max })
	stopSpin()
	waitFor(t, "one P again when idle", func() bool { return now.Load() == 1 })

	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != max {
		t.Fatalf("GOMAXPROCS after stop = %d, want %d", got, max)
	}
}

// With GOMAXPROCS in the environment the operator decided: Adapt returns
// at once and changes nothing.
func TestAdaptLeavesGOMAXPROCSEnv(t *testing.T) {
	t.Setenv("GOMAXPROCS", "3")
	before := runtime.GOMAXPROCS(0)
	changed := false
	Adapt(context.Background(), Options{OnChange: func(int) { changed = true }})
	if changed || runtime.GOMAXPROCS(0) != before {
		t.Fatalf("Adapt changed GOMAXPROCS with $GOMAXPROCS set")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 60 s (GOMAXPROCS %d)", what, runtime.GOMAXPROCS(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
