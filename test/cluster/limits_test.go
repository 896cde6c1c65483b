package cluster

import (
	"context"
	"testing"
	"time"
)

// The real binaries: a twin's sessions are counted over the three
// instances (leases in the shared Redis), so beyond --max-sessions-per-twin
// a connection to any instance is refused with 429, while a reconnect of a
// live session id to another instance is let in.
func TestClusterSessionsPerTwinBinaries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := startInstances(t, ctx, nil, "--max-sessions-per-twin", "2")
	d := newTwinDialer(t, ctx, e.reg, e.relays[0].Addr, "127.0.0.1")
	at := func(i int, sid string) int {
		t.Helper()
		d.url = "ws://" + e.relays[i].Addr + "/"
		st, err := d.connect(ctx, sid)
		if err != nil {
			t.Fatalf("%s on instance %d: %v\n%s", sid, i, err, e.c.Logs(30))
		}
		return st
	}
	for i, want := range []struct {
		inst int
		sid  string
		code int
	}{
		{0, "s0", 101}, {1, "s1", 101},
		{2, "s2", 429}, {0, "s2", 429}, {1, "s2", 429},
		{2, "s0", 101}, // s0 moves to instance 2: a reconnect, not a third session
		{2, "s3", 429},
	} {
		if got := at(want.inst, want.sid); got != want.code {
			t.Fatalf("step %d: %s on instance %d: %d, want %d\n%s", i, want.sid, want.inst, got, want.code, e.c.Logs(30))
		}
	}
	ms, err := e.relays[2].Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := ms.Sum("rmb_relay_refused_total", map[string]string{"reason": "twin_sessions"}); n < 2 {
		t.Fatalf("instance 2 counted %v refusals, want 2", n)
	}
}
