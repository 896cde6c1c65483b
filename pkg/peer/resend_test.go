package peer_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

// metricValue sums the samples of the counter or gauge name on reg whose
// labels include match.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue next
				}
			}
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

// A request whose first copy got lost beyond the sender's connection is
// sent again, same uid and signature, after a quarter of its TTL, while
// the connection stays up; its answer then reaches the caller once.
func TestResendWhenUnanswered(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer(func(o *peer.Options) { o.Redis = nil })
	raw := s.newRawTwin(false, 0)
	type result struct {
		rs  []peer.Response
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		rs, err := a.Call(context.Background(), []uint32{raw.twin}, "lost.cmd", []byte("q"), &peer.CallOptions{TTL: 8 * time.Second})
		done <- result{rs, err}
	}()
	first := raw.recv(10 * time.Second) // "lost": never answered
	second := raw.recv(10 * time.Second)
	if second.Uid != first.Uid || string(second.Signature) != string(first.Signature) {
		t.Fatalf("re-sent copy differs: uid %q/%q", first.Uid, second.Uid)
	}
	if waited := time.Since(start); waited < 1500*time.Millisecond {
		t.Fatalf("re-sent after %v, before a quarter of the TTL (7 to 8 s)", waited)
	}
	// The copy can reach the raw twin before the peer counted it.
	deadline := time.Now().Add(20 * time.Second)
	for metricValue(t, a.Registry(), "rmb_peer_resent_total", map[string]string{"reason": "unanswered"}) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := metricValue(t, a.Registry(), "rmb_peer_resent_total", map[string]string{"reason": "unanswered"}); n != 1 {
		t.Fatalf("rmb_peer_resent_total{reason=unanswered} = %v, want 1", n)
	}
	answer := envelope.NewResponse(first.Uid, []byte("a"), 60)
	answer.Source = envelope.NewAddress(raw.twin, "")
	answer.Destination = envelope.NewAddress(a.Twin(), "")
	answer.Stamp(time.Now())
	answer.Sign(raw.id)
	raw.send(answer)
	raw.send(answer) // the answer to the re-sent copy: the same
	r := <-done
	if r.err != nil || len(r.rs) != 1 || r.rs[0].Err != nil || string(r.rs[0].Data) != "a" {
		t.Fatalf("want one answer: %v %+v", r.err, r.rs)
	}
}

// A re-sent request that reaches the receiver while its handler still
// works on the first copy does not reach the handler again, and the
// caller gets the one answer.
func TestResendWhileServiceWorks(t *testing.T) {
	s := newStack(t, 1)
	noRedis := func(o *peer.Options) { o.Redis = nil }
	a, b := s.newPeer(noRedis), s.newPeer(noRedis)
	var calls atomic.Int32
	b.Handle("slow", func(ctx context.Context, r *peer.Request) ([]byte, error) {
		calls.Add(1)
		// Answer only once the copy sent again was suppressed.
		for metricValue(t, b.Registry(), "rmb_peer_duplicates_total", nil) < 1 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return []byte("done"), nil
	})
	rs, err := a.Call(context.Background(), []uint32{b.Twin()}, "slow", nil, &peer.CallOptions{TTL: 20 * time.Second})
	if err != nil || len(rs) != 1 || rs[0].Err != nil || string(rs[0].Data) != "done" {
		t.Fatalf("want the answer: %v %+v", err, rs)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	if n := metricValue(t, a.Registry(), "rmb_peer_resent_total", map[string]string{"reason": "unanswered"}); n < 1 {
		t.Fatalf("nothing re-sent")
	}
}

// A peer killed after it read an answer but before it pushed it to ret
// leaves the request in PendingHash. The restarted peer sends the request
// again at once (not after a share of the TTL), and the receiver answers
// from its cache: the client gets the answer, long before the deadline.
func TestResendOnRestart(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	id := newIdentity(t)
	const db = 14
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	defer rdb.Close()
	a := s.startPeer(id, db)
	// Capture the pending entry while the request waits for its answer:
	// hold the service's answer back by answering it ourselves later.
	pushRequest(t, rdb, request("held", "question", "ret", 300, b.Twin()))
	in := popJSON(t, b.rdb, "msgbus.held", 10*time.Second)
	var fields map[string]string
	waitFor(t, 20*time.Second, func() error {
		fields = rdb.HGetAll(ctx, peer.PendingHash).Val()
		if len(fields) != 1 {
			return fmt.Errorf("%d pending", len(fields))
		}
		return nil
	})
	reply := fmt.Sprintf(`{"ver":1,"ref":%q,"dst":%q,"dat":%q,"shm":"","now":0}`, in["ref"], in["src"], b64("answer"))
	b.rdb.LPush(ctx, peer.ReplyQueue, reply)
	if m := popJSON(t, rdb, "ret", 10*time.Second); unb64(t, m["dat"]) != "answer" {
		t.Fatalf("bad answer %v", m)
	}
	a.stop()
	// The state a kill -9 leaves between reading the answer and pushing
	// it: the request pending, nothing on ret.
	for f, v := range fields {
		rdb.HSet(ctx, peer.PendingHash, f, v)
	}
	a2 := s.startPeer(id, db)
	m := popJSON(t, rdb, "ret", 20*time.Second)
	if errCode(t, m) != 0 || unb64(t, m["dat"]) != "answer" {
		t.Fatalf("bad answer after restart: %v", m)
	}
	if n := metricValue(t, a2.Registry(), "rmb_peer_resent_total", map[string]string{"reason": "restart"}); n != 1 {
		t.Fatalf("rmb_peer_resent_total{reason=restart} = %v, want 1", n)
	}
	waitFor(t, 20*time.Second, func() error {
		if h := rdb.HLen(ctx, peer.PendingHash).Val(); h != 0 {
			return fmt.Errorf("%d pending after the answer", h)
		}
		return nil
	})
	if n := rdb.LLen(ctx, "ret").Val(); n != 0 {
		t.Fatalf("%d more responses on ret", n)
	}
}

// Relay errors name no destination (source twin 0, same uid). A request
// to several twins gets exactly one response per destination: the relay
// error goes to the one destination that did not answer, and errors for
// every destination go one to each.
func TestMultiDestinationRelayError(t *testing.T) {
	s := newStack(t, 1)
	noRedis := func(o *peer.Options) { o.Redis = nil }
	a, b := s.newPeer(noRedis), s.newPeer(noRedis)
	b.Handle("who", func(context.Context, *peer.Request) ([]byte, error) { return []byte("b"), nil })
	// Twins of this relay that never connect: with fail-fast the relay
	// answers "destination offline" at once.
	offline := func() uint32 {
		tw, err := s.client().Register(context.Background(), newIdentity(t), []string{s.relays[0].domain})
		if err != nil {
			t.Fatal(err)
		}
		return tw.ID
	}
	c, d := offline(), offline()
	opts := &peer.CallOptions{TTL: 60 * time.Second, Tags: "fail-fast"}
	for _, tc := range []struct {
		dst     []uint32
		answers []uint32 // sources answered without error
	}{
		{[]uint32{b.Twin(), c}, []uint32{b.Twin()}},
		{[]uint32{c, d}, nil},
		{[]uint32{c, b.Twin(), d}, []uint32{b.Twin()}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		rs, err := a.Call(ctx, tc.dst, "who", nil, opts)
		cancel()
		if err != nil {
			t.Fatalf("%v: %v (responses %+v)", tc.dst, err, rs)
		}
		var srcs []uint32
		for _, r := range rs {
			srcs = append(srcs, r.Source)
			answered := slices.Contains(tc.answers, r.Source)
			if answered && (r.Err != nil || string(r.Data) != "b") || !answered && (r.Err == nil || r.Err.Code != envelope.CodeOffline) {
				t.Errorf("%v: bad response from %d: %+v", tc.dst, r.Source, r)
			}
		}
		slices.Sort(srcs)
		want := slices.Sorted(slices.Values(tc.dst))
		if !slices.Equal(srcs, want) {
			t.Errorf("%v: responses from %v, want one from each of %v", tc.dst, srcs, want)
		}
	}
}
