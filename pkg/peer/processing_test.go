package peer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// recovered is the peer's rmb_peer_recovered_total for list.
func recovered(t *testing.T, p *testPeer, list string) float64 {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "rmb_peer_recovered_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "list" && l.GetValue() == list {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A message Redis moved to the processing list while the peer runs, but
// whose move reply was lost, is found and handled within seconds: the
// request is sent and answered, garbage is dead-lettered, and the
// processing lists end empty.
func TestLostMoveReplyIsHandled(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	serve(t, b.rdb, "echo", echo)
	ctx := context.Background()

	// As a BLMOVE whose reply was lost leaves it.
	req, _ := json.Marshal(request("echo", "stuck", "ret", 30, b.Twin()))
	start := time.Now()
	if err := a.rdb.LPush(ctx, peer.LocalProcessing, req).Err(); err != nil {
		t.Fatal(err)
	}
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if unb64(t, m["dat"]) != "echo:stuck" || m["src"] != twinString(b.Twin()) || m["ref"] != "ref-ret" {
		t.Fatalf("bad answer %v", m)
	}
	t.Logf("answered %v after the entry appeared", time.Since(start).Round(time.Millisecond))
	waitFor(t, 20*time.Second, func() error {
		if n := a.rdb.LLen(ctx, peer.LocalProcessing).Val(); n != 0 {
			return fmt.Errorf("%d left in processing", n)
		}
		return nil
	})
	if n := recovered(t, a, peer.LocalProcessing); n != 1 {
		t.Fatalf("recovered %v entries, want 1", n)
	}

	// Garbage in either processing list ends in the dead-letter list.
	for _, list := range []string{peer.LocalProcessing, peer.ReplyProcessing} {
		if err := a.rdb.LPush(ctx, list, "not json from "+list).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	for range 2 {
		d := popJSON(t, a.rdb, peer.DeadLetterQueue, 10*time.Second)
		got[d["queue"].(string)] = d["message"].(string)
	}
	want := map[string]string{peer.LocalQueue: "not json from " + peer.LocalProcessing, peer.ReplyQueue: "not json from " + peer.ReplyProcessing}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dead letters %v, want %v", got, want)
	}
	waitFor(t, 20*time.Second, func() error {
		for _, list := range []string{peer.LocalProcessing, peer.ReplyProcessing} {
			if n := a.rdb.LLen(ctx, list).Val(); n != 0 {
				return fmt.Errorf("%d left in %s", n, list)
			}
		}
		return nil
	})
	// The request was answered once.
	if res, err := a.rdb.BRPop(ctx, time.Second, "ret").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("second answer %v %v", res, err)
	}
}

// slowRegistrar makes the first lookup of one twin take delay, so a
// worker holds a request for that long.
type slowRegistrar struct {
	*registrar.Client
	twin  uint32
	delay time.Duration
	slept atomic.Bool
}

func (r *slowRegistrar) Twin(ctx context.Context, id uint32) (*registrar.Twin, error) {
	if id == r.twin && r.slept.CompareAndSwap(false, true) {
		select {
		case <-time.After(r.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return r.Client.Twin(ctx, id)
}

// An entry a worker is handling, for longer than several scans of the
// processing list, is not taken for lost: the service gets the request
// once and the client one answer.
func TestHeldEntryIsNotHandledTwice(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	var deliveries atomic.Int32
	serve(t, b.rdb, "count", func(string) (string, error) {
		deliveries.Add(1)
		return "ok", nil
	})
	reg := &slowRegistrar{Client: s.client(), twin: b.Twin(), delay: 7 * time.Second}
	a := s.newPeer(func(o *peer.Options) { o.Registrar = reg })
	ctx := context.Background()

	pushRequest(t, a.rdb, request("count", "", "ret", 60, b.Twin()))
	// The worker is in the slow lookup: the request is held in the
	// processing list while the peer scans it several times.
	time.Sleep(time.Second)
	if n := a.rdb.LLen(ctx, peer.LocalProcessing).Val(); n != 1 || !reg.slept.Load() {
		t.Fatalf("%d in processing (lookup started: %v), want the request held there", n, reg.slept.Load())
	}
	m := popJSON(t, a.rdb, "ret", 20*time.Second)
	if unb64(t, m["dat"]) != "ok" || m["err"] != nil {
		t.Fatalf("bad answer %v", m)
	}
	// Long enough for a second handling to show.
	if res, err := a.rdb.BRPop(ctx, 5*time.Second, "ret").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("second answer %v %v", res, err)
	}
	if n := deliveries.Load(); n != 1 {
		t.Fatalf("service got the request %d times, want 1", n)
	}
	if n := a.rdb.LLen(ctx, peer.LocalProcessing).Val(); n != 0 {
		t.Fatalf("%d left in processing", n)
	}
	if n := recovered(t, a, peer.LocalProcessing); n != 0 {
		t.Fatalf("recovered %v entries, want 0", n)
	}
}
