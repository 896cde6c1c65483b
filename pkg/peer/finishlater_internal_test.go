package peer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

// waitingRequest registers a sent request from Redis to twin 7, answered
// on the list "ret", and puts raw, the message it came from, in
// LocalProcessing, held.
func waitingRequest(t *testing.T, p *Peer, uid, raw string) *pending {
	t.Helper()
	ctx := context.Background()
	p.graceCtx = ctx
	deadline := time.Now().Add(time.Minute)
	pd := &pending{uid: uid, sent: time.Now(), deadline: deadline, waiting: map[uint32][]byte{7: []byte("signed envelope")},
		deliver: p.deliverToQueue("ret", "ref-"+uid, deadline), ret: "ret", ref: "ref-" + uid}
	p.pendMu.Lock()
	p.pending[uid] = pd
	p.pendMu.Unlock()
	if err := p.rdb.LPush(ctx, LocalProcessing, raw).Err(); err != nil {
		t.Fatal(err)
	}
	p.held[LocalProcessing].add(raw)
	return pd
}

// An answer that comes while the finish of its request waits goes to ret
// in one script with the LREM of the request, even after Redis forgot its
// scripts; the request never reaches PendingHash, and nothing stays held.
func TestAnswerTakesWaitingFinish(t *testing.T) {
	p, rdb := redisPeer(t, 100)
	ctx := context.Background()
	for i, flush := range []bool{false, true} {
		uid, raw := fmt.Sprint("uid-", i), fmt.Sprint("raw-", i)
		waitingRequest(t, p, uid, raw)
		p.finishLater(raw, []string{uid})
		if flush {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		p.complete(ctx, uid, 7, &Response{Source: 7, Timestamp: time.Now(), Data: []byte("answer")})
		err := wait.For(ctx, 20*time.Second, func() error {
			if n := rdb.LLen(ctx, "ret").Val(); n != int64(i+1) {
				return fmt.Errorf("ret holds %d answers", n)
			}
			if n := rdb.LLen(ctx, LocalProcessing).Val(); n != 0 {
				return fmt.Errorf("processing list holds %d", n)
			}
			if n := p.held[LocalProcessing].count(); n != 0 {
				return fmt.Errorf("%d still held", n)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after SCRIPT FLUSH %v: %v", flush, err)
		}
	}
	// Past finishDelay: the timer finds nothing left to persist.
	time.Sleep(2 * finishDelay)
	if n := rdb.HLen(ctx, PendingHash).Val(); n != 0 {
		t.Fatalf("PendingHash holds %d fields; want none", n)
	}
}

// A request not answered within finishDelay is persisted with the LREM of
// its message, and its answer then deletes the field with its push. A
// stopping peer persists what waits at once, and from then on finishes
// without waiting.
func TestWaitingFinishPersisted(t *testing.T) {
	p, rdb := redisPeer(t, 100)
	ctx := context.Background()
	waitingRequest(t, p, "u1", "r1")
	p.finishLater("r1", []string{"u1"})
	persisted := func(field string) func() error {
		return func() error {
			if n := rdb.LLen(ctx, LocalProcessing).Val(); n != 0 {
				return fmt.Errorf("processing list holds %d", n)
			}
			if !rdb.HExists(ctx, PendingHash, field).Val() {
				return fmt.Errorf("%s not in PendingHash", field)
			}
			return nil
		}
	}
	if err := wait.For(ctx, 20*time.Second, persisted("u1/7")); err != nil {
		t.Fatal(err)
	}
	p.complete(ctx, "u1", 7, &Response{Source: 7, Timestamp: time.Now(), Data: []byte("answer")})
	err := wait.For(ctx, 20*time.Second, func() error {
		if rdb.LLen(ctx, "ret").Val() != 1 || rdb.HLen(ctx, PendingHash).Val() != 0 {
			return fmt.Errorf("ret %d, PendingHash %d", rdb.LLen(ctx, "ret").Val(), rdb.HLen(ctx, PendingHash).Val())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Stopping: persisted at once, well before finishDelay would matter.
	waitingRequest(t, p, "u2", "r2")
	p.finishLater("r2", []string{"u2"})
	p.flushLater(true)
	if err := wait.For(ctx, 20*time.Second, persisted("u2/7")); err != nil {
		t.Fatal(err)
	}
	pd := waitingRequest(t, p, "u3", "r3")
	p.finishLater("r3", []string{"u3"})
	p.pendMu.Lock()
	left := pd.finishRaw
	p.pendMu.Unlock()
	if left != "" {
		t.Fatalf("after the stop a finish still waits: %q", left)
	}
	if err := wait.For(ctx, 20*time.Second, persisted("u3/7")); err != nil {
		t.Fatal(err)
	}
}

// The LREM of a handled service answer waits for the next batch, or
// finishDelay when none comes, and holds its message until then.
func TestLazyReplyFinish(t *testing.T) {
	p, rdb := redisPeer(t, 100)
	ctx := context.Background()
	rdb.LPush(ctx, ReplyProcessing, "a", "b")
	p.held[ReplyProcessing].add("a", "b")
	p.finish(ReplyProcessing, "a", "")
	err := wait.For(ctx, 20*time.Second, func() error {
		if l := rdb.LRange(ctx, ReplyProcessing, 0, -1).Val(); len(l) != 1 || l[0] != "b" {
			return fmt.Errorf("processing list %q", l)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := p.held[ReplyProcessing].count(); n != 1 {
		t.Fatalf("%d held; want 1 (b)", n)
	}
	// With a push that goes at once.
	p.finish(ReplyProcessing, "b", "")
	if _, err := p.push(ctx, "q", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n := rdb.LLen(ctx, ReplyProcessing).Val(); n != 0 {
		t.Fatalf("processing list holds %d after the push's batch", n)
	}
}
