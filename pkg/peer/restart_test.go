package peer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

// Messages a peer moved to its processing list but had not sent when it
// stopped (its relay was gone) are all sent by the next run, and nothing
// is left behind.
func TestInFlightBatchSurvivesStop(t *testing.T) {
	s := newStack(t, 2)
	b := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(0) })
	serve(t, b.rdb, "echo", echo)
	id := newIdentity(t)
	const db, n = 15, 40
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	defer rdb.Close()

	// First run: only relay 1, which dies. Few workers, so some messages
	// wait in the processing list for a worker and some in a worker for
	// a relay.
	a := s.startPeer(id, db, func(o *peer.Options) { o.Relays = s.relayURLs(1); o.Workers = 8 })
	s.relays[1].kill()
	waitFor(t, 20*time.Second, func() error {
		if a.Connected() != 0 {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	for i := range n {
		pushRequest(t, rdb, request("echo", strconv.Itoa(i), "ret", 60, b.Twin()))
	}
	waitFor(t, 20*time.Second, func() error {
		if l := rdb.LLen(ctx, peer.LocalProcessing).Val(); l < 8 {
			return fmt.Errorf("%d in processing", l)
		}
		return nil
	})
	a.stop()
	queued, processing := rdb.LLen(ctx, peer.LocalQueue).Val(), rdb.LLen(ctx, peer.LocalProcessing).Val()
	if queued+processing != n {
		t.Fatalf("after the stop: %d queued + %d in processing, want %d", queued, processing, n)
	}
	if l := rdb.LLen(ctx, "ret").Val(); l != 0 {
		t.Fatalf("%d answers before any was sent", l)
	}
	t.Logf("stopped with %d queued and %d in processing", queued, processing)

	// Second run, on the live relay.
	s.startPeer(id, db, func(o *peer.Options) { o.Relays = s.relayURLs(0) })
	got := map[string]bool{}
	for range n {
		m := popJSON(t, rdb, "ret", 10*time.Second)
		if errCode(t, m) != 0 {
			t.Fatalf("error answer %v", m)
		}
		got[unb64(t, m["dat"])] = true
	}
	if len(got) != n {
		t.Fatalf("%d distinct answers, want %d", len(got), n)
	}
	waitFor(t, 20*time.Second, func() error {
		l, p, h := rdb.LLen(ctx, peer.LocalQueue).Val(), rdb.LLen(ctx, peer.LocalProcessing).Val(), rdb.HLen(ctx, peer.PendingHash).Val()
		if l+p+h != 0 {
			return fmt.Errorf("%d queued, %d in processing, %d pending", l, p, h)
		}
		return nil
	})
}

// An answer to a request sent before a restart reaches the client: the
// service answers while the requesting peer is down, the relay keeps the
// answer, and the restarted peer knows the request from Redis.
func TestAnswerAcrossRestart(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	id := newIdentity(t)
	const db = 15
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	defer rdb.Close()
	a := s.startPeer(id, db)

	req := request("slow", "question", "ret", 60, b.Twin())
	pushRequest(t, rdb, req)
	// The slow service has the request; the requesting peer persisted it.
	in := popJSON(t, b.rdb, "msgbus.slow", 10*time.Second)
	waitFor(t, 20*time.Second, func() error {
		if h := rdb.HLen(ctx, peer.PendingHash).Val(); h != 1 {
			return fmt.Errorf("%d pending", h)
		}
		return nil
	})
	a.stop()

	reply, _ := json.Marshal(map[string]any{"ver": 1, "ref": in["ref"], "dst": in["src"], "dat": b64("answer"),
		"shm": "text/plain", "now": time.Now().Unix()})
	b.rdb.LPush(ctx, peer.ReplyQueue, reply)
	// The answer leaves the service's peer while the requester is down.
	waitFor(t, 20*time.Second, func() error {
		if l := b.rdb.LLen(ctx, peer.ReplyQueue).Val() + b.rdb.LLen(ctx, peer.ReplyProcessing).Val(); l != 0 {
			return fmt.Errorf("%d replies not sent", l)
		}
		return nil
	})

	s.startPeer(id, db)
	m := popJSON(t, rdb, "ret", 10*time.Second)
	if errCode(t, m) != 0 || unb64(t, m["dat"]) != "answer" || m["ref"] != req["ref"] || m["src"] != twinString(b.Twin()) {
		t.Fatalf("bad answer after restart: %v", m)
	}
	waitFor(t, 20*time.Second, func() error {
		if h := rdb.HLen(ctx, peer.PendingHash).Val(); h != 0 {
			return fmt.Errorf("%d pending after the answer", h)
		}
		return nil
	})
}

// A request that is never answered still gets its 408 on ret after a
// restart, whether the deadline passes while the peer runs again or while
// it is down.
func TestTimeoutAcrossRestart(t *testing.T) {
	for _, downPastDeadline := range []bool{false, true} {
		t.Run(fmt.Sprintf("down_past_deadline=%v", downPastDeadline), func(t *testing.T) {
			s := newStack(t, 1)
			b := s.newPeer()
			id := newIdentity(t)
			const db = 15
			ctx := context.Background()
			rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
			defer rdb.Close()
			a := s.startPeer(id, db)

			start := time.Now()
			req := request("nobody.home", "", "ret", 3, b.Twin())
			pushRequest(t, rdb, req)
			waitFor(t, 20*time.Second, func() error {
				if h := rdb.HLen(ctx, peer.PendingHash).Val(); h != 1 {
					return fmt.Errorf("%d pending", h)
				}
				return nil
			})
			a.stop()
			if downPastDeadline {
				time.Sleep(time.Until(start.Add(4 * time.Second)))
			}
			restarted := time.Now()
			s.startPeer(id, db)
			m := popJSON(t, rdb, "ret", 10*time.Second)
			if errCode(t, m) != envelope.CodeTimeout || m["ref"] != req["ref"] || m["src"] != twinString(b.Twin()) {
				t.Fatalf("want a 408 after the restart, got %v", m)
			}
			if time.Since(start) < 2*time.Second {
				t.Fatalf("timed out after %v, before the TTL", time.Since(start))
			}
			if downPastDeadline && time.Since(restarted) > 3*time.Second {
				t.Fatalf("expired request answered %v after the restart", time.Since(restarted))
			}
			if l := rdb.LLen(ctx, "ret").Val(); l != 0 {
				t.Fatalf("%d more answers", l)
			}
			waitFor(t, 20*time.Second, func() error {
				if h := rdb.HLen(ctx, peer.PendingHash).Val(); h != 0 {
					return fmt.Errorf("%d pending after the timeout", h)
				}
				return nil
			})
		})
	}
}

// Under load, answers often arrive before the request is persisted;
// either way no pending entry outlives its answer.
func TestPendingHashEmptiesUnderLoad(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	serve(t, b.rdb, "echo", echo)
	const n = 300
	for i := range n {
		pushRequest(t, a.rdb, request("echo", strconv.Itoa(i), "ret", 60, b.Twin(), b.Twin()))
	}
	for range n {
		if m := popJSON(t, a.rdb, "ret", 10*time.Second); errCode(t, m) != 0 {
			t.Fatalf("error answer %v", m)
		}
	}
	ctx := context.Background()
	waitFor(t, 20*time.Second, func() error {
		if h := a.rdb.HLen(ctx, peer.PendingHash).Val(); h != 0 {
			return fmt.Errorf("%d pending after all answers", h)
		}
		return nil
	})
}
