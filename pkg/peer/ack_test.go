package peer_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// dropped is the peer's rmb_peer_dropped_total for reason.
func dropped(t *testing.T, p *testPeer, reason string) float64 {
	t.Helper()
	return p.Stats()[`rmb_peer_dropped_total{reason="`+reason+`"}`]
}

// A consumer that takes a request and never answers (it hung, or died)
// loses it to another consumer once its lease runs out; the caller gets
// one answer, and the dead consumer's late answer is dropped by the peer.
func TestAckRedeliveredAnsweredOnce(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	ctx := context.Background()
	cl := redisapi.NewClient(b.rdb)

	type result struct {
		rs  []peer.Response
		err error
	}
	done := make(chan result, 1)
	go func() {
		rs, err := a.Call(ctx, []uint32{b.Twin()}, "work", []byte("job"), &peer.CallOptions{TTL: 60 * time.Second})
		done <- result{rs, err}
	}()
	// The first consumer takes it, with a short lease, and hangs.
	var held *redisapi.Taken
	waitFor(t, 20*time.Second, func() error {
		tk, err := cl.Take(ctx, "work", "hung", redisapi.MinVisibility, time.Second)
		if err != nil {
			return err
		}
		if tk == nil {
			return fmt.Errorf("no request yet")
		}
		held = tk
		return nil
	})
	if held.Request == nil || held.Request.Command != "work" {
		t.Fatalf("taken: %+v", held)
	}
	if n := b.rdb.LLen(ctx, redisapi.QueueTakenPrefix+"hung").Val(); n != 1 {
		t.Fatalf("processing list of the hung consumer holds %d", n)
	}
	// Another consumer serves with acknowledged delivery.
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- cl.ServeWith(sctx, "work", func(_ context.Context, _ *redisapi.IncomingRequest, p []byte) ([]byte, error) {
			return []byte("done:" + string(p)), nil
		}, &redisapi.ServeOptions{Consumer: "live", Visibility: 5 * time.Second})
	}()
	defer func() { stop(); <-served }()

	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("no answer within 60s")
	}
	if r.err != nil || len(r.rs) != 1 || r.rs[0].Err != nil || string(r.rs[0].Data) != "done:job" {
		t.Fatalf("call: %+v %v", r.rs, r.err)
	}
	if n := b.Stats()["rmb_peer_redelivered_total"]; n != 1 {
		t.Fatalf("redelivered %v, want 1", n)
	}
	// The hung consumer wakes up and answers too: its acknowledgement
	// finds nothing, and the peer drops the second answer.
	resp := &redisapi.OutgoingResponse{Version: 1, Ref: held.Request.Ref, Destination: held.Request.Source,
		Data: redisapi.EncodeData([]byte("late")), Now: time.Now().Unix()}
	if err := cl.Answer(ctx, held, resp); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		if n := dropped(t, b, "duplicate_answer"); n != 1 {
			return fmt.Errorf("duplicate answers dropped: %v", n)
		}
		return nil
	})
	if n := a.Stats()["rmb_peer_responses_received_total"]; n != 1 {
		t.Fatalf("caller's peer received %v responses", n)
	}
	// Nothing is left behind: processing lists empty, dead lease gone.
	waitFor(t, 20*time.Second, func() error {
		for _, k := range []string{redisapi.QueueTakenPrefix + "hung", redisapi.QueueTakenPrefix + "live", "msgbus.work"} {
			if n := b.rdb.LLen(ctx, k).Val(); n != 0 {
				return fmt.Errorf("%s holds %d", k, n)
			}
		}
		if _, err := b.rdb.ZScore(ctx, redisapi.KeyLeases, "hung").Result(); err != redis.Nil {
			return fmt.Errorf("lease of the hung consumer still there: %v", err)
		}
		return nil
	})
}

// Plain BRPOP services are unchanged, and bad entries under the leases
// (a bad consumer name, garbage in a processing list, an expired request)
// are dropped, dead-lettered or answered 408, and counted.
func TestAckBadEntries(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	ctx := context.Background()
	serve(t, b.rdb, "plain", echo)
	rs, err := a.Call(ctx, []uint32{b.Twin()}, "plain", []byte("x"), &peer.CallOptions{TTL: 20 * time.Second})
	if err != nil || len(rs) != 1 || string(rs[0].Data) != "echo:x" {
		t.Fatalf("plain BRPOP service: %+v %v", rs, err)
	}

	past := float64(time.Now().Add(-time.Minute).UnixMilli())
	b.rdb.ZAdd(ctx, redisapi.KeyLeases, redis.Z{Score: past, Member: "bad name!"}, redis.Z{Score: past, Member: "dead"})
	b.rdb.LPush(ctx, redisapi.QueueTakenPrefix+"dead", "not json",
		`{"ver":1,"ref":"r1","src":"1","cmd":"system.local","exp":60,"dat":"","ret":"msgbus.system.reply","now":1}`)
	if _, err := redisapi.NewClient(b.rdb).Take(ctx, "x", "bad name!", 5*time.Second, time.Second); err == nil {
		t.Fatal("Take with a bad consumer name")
	}
	if _, err := redisapi.NewClient(b.rdb).Take(ctx, "x", "ok", time.Second, time.Second); err == nil {
		t.Fatal("Take with a visibility under the minimum")
	}
	waitFor(t, 20*time.Second, func() error {
		if n := dropped(t, b, "bad_consumer"); n != 1 {
			return fmt.Errorf("bad_consumer %v", n)
		}
		if n := dropped(t, b, "bad_taken_entry"); n != 2 {
			return fmt.Errorf("bad_taken_entry %v", n)
		}
		if n := b.rdb.ZCard(ctx, redisapi.KeyLeases).Val(); n != 0 {
			return fmt.Errorf("%d leases left", n)
		}
		return nil
	})
	// Nothing was pushed on the reserved list the forged entry named.
	if n := b.rdb.LLen(ctx, peer.LocalQueue).Val(); n != 0 {
		t.Fatalf("msgbus.system.local holds %d", n)
	}
	for range 2 {
		d := popJSON(t, b.rdb, peer.DeadLetterQueue, 10*time.Second)
		if d["queue"] != redisapi.QueueTakenPrefix+"dead" {
			t.Fatalf("dead letter %v", d)
		}
	}

	// A request that expires in a hung consumer's hands is answered 408.
	cl := redisapi.NewClient(b.rdb)
	done := make(chan []peer.Response, 1)
	go func() {
		rs, _ := a.Call(ctx, []uint32{b.Twin()}, "slow", nil, &peer.CallOptions{TTL: 3 * time.Second})
		done <- rs
	}()
	var tk *redisapi.Taken
	waitFor(t, 20*time.Second, func() error {
		tk, err = cl.Take(ctx, "slow", "hung", 30*time.Second, time.Second)
		if err != nil || tk == nil {
			return fmt.Errorf("not taken: %v", err)
		}
		return nil
	})
	// Its lease runs out after the request's deadline.
	waitFor(t, 20*time.Second, func() error {
		if end := tk.Request.Now + int64(tk.Request.Expiration); time.Now().Unix() < end {
			return fmt.Errorf("request not expired yet")
		}
		return nil
	})
	b.rdb.ZAdd(ctx, redisapi.KeyLeases, redis.Z{Score: past, Member: "hung"})
	waitFor(t, 20*time.Second, func() error {
		if n := dropped(t, b, "taken_expired"); n != 1 {
			return fmt.Errorf("taken_expired %v", n)
		}
		return nil
	})
	if rs := <-done; len(rs) != 1 || rs[0].Err == nil || rs[0].Err.Code != envelope.CodeTimeout {
		t.Fatalf("expired call: %+v", rs)
	}
	if d := popJSON(t, b.rdb, peer.DeadLetterQueue, 10*time.Second); d["queue"] != redisapi.QueueTakenPrefix+"hung" ||
		!strings.Contains(d["reason"].(string), "lease") {
		t.Fatalf("dead letter %v", d)
	}
}

// The Python example, serving with --consumer, is killed (SIGKILL) while
// it holds a request; a second one, another consumer, answers it once.
func TestAckPythonConsumerKilled(t *testing.T) {
	py := python(t)
	script, err := filepath.Abs("../../examples/python/bot.py")
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, 1)
	client, service := s.newPeer(), s.newPeer()
	url := fmt.Sprintf("redis://%s/%d", s.redis.Addr, service.opts.Redis.Options().DB)
	start := func(consumer string, delay string) *exec.Cmd {
		out := &lockedBuffer{}
		c := exec.Command(py, script, "serve", "--redis", url, "--consumer", consumer, "--visibility", "3", "--delay", delay)
		c.Stdout, c.Stderr = out, out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			c.Process.Kill()
			c.Wait()
			if t.Failed() {
				t.Logf("%s: %s", consumer, out)
			}
		})
		return c
	}
	slow := start("py-slow", "600")
	ctx := context.Background()
	done := make(chan []peer.Response, 1)
	go func() {
		rs, _ := client.Call(ctx, []uint32{service.Twin()}, "calc.add", []byte("[1,2,3]"), &peer.CallOptions{TTL: 60 * time.Second})
		done <- rs
	}()
	waitFor(t, 20*time.Second, func() error {
		if n := service.rdb.LLen(ctx, redisapi.QueueTakenPrefix+"py-slow").Val(); n != 1 {
			return fmt.Errorf("py-slow holds %d", n)
		}
		return nil
	})
	slow.Process.Signal(syscall.SIGKILL)
	slow.Wait()
	start("py-fast", "0")
	var rs []peer.Response
	select {
	case rs = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("no answer within 60s")
	}
	if len(rs) != 1 || rs[0].Err != nil || strings.TrimSpace(string(rs[0].Data)) != "6" {
		t.Fatalf("call: %+v", rs)
	}
	if n := service.Stats()["rmb_peer_redelivered_total"]; n != 1 {
		t.Fatalf("redelivered %v", n)
	}
}
