package relay

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/natstest"
	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
)

// dialStatus tries to connect tw's session sid and returns the HTTP status
// and body of a refusal (0 and the client when it connected).
func dialStatus(t *testing.T, tr *testRelay, tw *twin, sid string) (int, string, *client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, tw, sid), nil)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial twin %d sid %q: %v", tw.num, sid, err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b)), nil
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	cl := &client{t: t, c: c, tw: tw, sid: sid, in: make(chan received, 1024)}
	go func() {
		for {
			_, b, err := c.Read(context.Background())
			cl.in <- received{b, err}
			if err != nil {
				return
			}
		}
	}()
	return 0, "", cl
}

// A twin's sessions spread over three instances are counted together:
// beyond MaxSessionsPerTwin a connection to any instance is refused (429),
// a reconnect of a live session id is not, a session that ends frees its
// place at once, and the lease of an instance that died expires.
func TestClusterSessionsPerTwinAcrossInstances(t *testing.T) {
	ttl, every := leaseTTL, leaseRefresh
	leaseTTL, leaseRefresh = 3*time.Second, 300*time.Millisecond
	c := startClusterWith(t, natstest.StartCluster(t, 3), false, func(o *Options) { o.MaxSessionsPerTwin = 3 })
	leaseTTL, leaseRefresh = ttl, every // each instance took them at start
	tw := c.reg.newTwin(t, clusterDomain)
	var conns []*client
	for i, r := range c.relays {
		conns = append(conns, dial(t, r, tw, fmt.Sprint("s", i)))
	}
	for i, r := range c.relays {
		code, body, _ := dialStatus(t, r, tw, "s3")
		if code != 429 || body != "too many sessions of this twin" {
			t.Fatalf("4th session on instance %d: %d %q, want 429", i, code, body)
		}
	}
	// A live session id reconnecting elsewhere replaces its connection.
	s1 := dial(t, c.relays[0], tw, "s1")
	if _, err := conns[1].recvWithin(30 * time.Second); websocket.CloseStatus(err) != statusReplaced {
		t.Fatalf("s1 on instance 1: %v, want closed 4000", err)
	}
	waitSession(t, c.relays[1].Relay, SessionKey{Twin: tw.num, SID: "s1"}, false)
	_ = s1
	// s2 leaves: its place is free on every instance.
	conns[2].c.Close(websocket.StatusNormalClosure, "")
	waitSession(t, c.relays[2].Relay, SessionKey{Twin: tw.num, SID: "s2"}, false)
	waitFor(t, 30*time.Second, func() error {
		n, err := c.rdb.HLen(context.Background(), c.relays[0].cl.leaseKey(tw.num)).Result()
		if err != nil || n != 2 {
			return fmt.Errorf("%d leases (%v), want 2", n, err)
		}
		return nil
	})
	// A dead instance's lease (written as it would have) holds the place
	// until it expires, 2 s from now by Redis's clock.
	now, err := c.rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	ghost := fmt.Sprintf("%d|dead/x", now.Add(2*time.Second).UnixMilli())
	if err := c.rdb.HSet(context.Background(), c.relays[0].cl.leaseKey(tw.num), leaseField("ghost"), ghost).Err(); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := dialStatus(t, c.relays[1], tw, "s3"); code != 429 {
		t.Fatalf("with a dead instance's live lease: %d, want 429", code)
	}
	waitFor(t, 30*time.Second, func() error {
		code, body, cl := dialStatus(t, c.relays[1], tw, "s3")
		if cl == nil {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if n := c.relays[1].counters.refused[refuseTwinSessions].Load(); n == 0 {
		t.Fatal("refusals not counted")
	}
	// Leases are refreshed: s0's expiry moves on.
	ctx := context.Background()
	key := c.relays[0].cl.leaseKey(tw.num)
	first, err := c.rdb.HGet(ctx, key, leaseField("s0")).Result()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		v, err := c.rdb.HGet(ctx, key, leaseField("s0")).Result()
		if err != nil || v == first {
			return fmt.Errorf("lease %q (%v) not refreshed", v, err)
		}
		return nil
	})
	// A lease taken by another connection (as a claim would) closes the
	// session at the next refresh.
	if err := c.rdb.HSet(ctx, key, leaseField("s0"), fmt.Sprintf("%d|other/x", now.Add(time.Hour).UnixMilli())).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := conns[0].recvWithin(30 * time.Second); websocket.CloseStatus(err) != statusReplaced {
		t.Fatalf("s0 after losing its lease: %v, want closed 4000", err)
	}
	for _, r := range c.relays {
		if n := r.cl.counts[clusterRedisError].Load(); n != 0 {
			t.Fatalf("%s: %d Redis errors", r.opts.Instance, n)
		}
	}
}

// The rate limit of a twin holds over all instances: three sessions on
// three instances sending 20 envelopes each under a limit of 20 per hour
// pass 20 together (plus what the bucket refilled meanwhile), not 60.
func TestClusterRateLimitAcrossInstances(t *testing.T) {
	const limit, each = 20, 20
	c := startClusterWith(t, natstest.StartCluster(t, 3), false, func(o *Options) {
		o.RateLimit = &RateLimit{Messages: limit, Window: time.Hour}
	})
	start := time.Now()
	sink := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	tw := c.reg.newTwin(t, clusterDomain)
	var senders []*client
	for i, r := range c.relays {
		senders = append(senders, dial(t, r, tw, fmt.Sprint("r", i)))
	}
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range each {
				s.sendRaw(marshal(t, request(t, tw, s.sid, sink.tw.num, "", fmt.Sprint(s.sid, "-", k), 60)))
			}
		}()
	}
	wg.Wait()
	// Every envelope ends as a delivery or a rate-limit error.
	var limited, delivered atomic.Int64
	count := func(cl *client, n *atomic.Int64, wantErr bool) {
		for {
			e, err := cl.recvWithin(time.Minute)
			if err != nil {
				return
			}
			if e.IsError() != wantErr || (wantErr && e.GetError().GetMessage() != msgRateLimited) {
				t.Errorf("twin %d got %v", cl.tw.num, e)
			}
			n.Add(1)
		}
	}
	go count(sink, &delivered, false)
	for _, s := range senders {
		go count(s, &limited, true)
	}
	waitFor(t, 60*time.Second, func() error {
		if d, l := delivered.Load(), limited.Load(); d+l != 3*each {
			return fmt.Errorf("delivered %d, limited %d of %d", d, l, 3*each)
		}
		return nil
	})
	refill := int(float64(limit) * time.Since(start).Seconds() / time.Hour.Seconds())
	if d := int(delivered.Load()); d < limit || d > limit+refill+1 {
		t.Fatalf("delivered %d of %d over three instances, want %d (+%d refilled)", d, 3*each, limit, refill)
	}
	for _, r := range c.relays {
		if n := r.cl.counts[clusterRedisError].Load(); n != 0 {
			t.Fatalf("%s: %d Redis errors", r.opts.Instance, n)
		}
	}
}

// Two connections of one (twin, sid) reaching two instances at the same
// instant, many times over, while envelopes stream to the session: after
// each round exactly one connection is left and exactly one instance holds
// the session; every envelope is delivered once, none twice.
func TestClusterSessionRace(t *testing.T) {
	c := startCluster(t)
	a := dial(t, c.relays[2], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	key := SessionKey{Twin: btw.num, SID: "race"}

	var mu sync.Mutex
	var finished atomic.Bool
	defer finished.Store(true)
	seen := map[string]int{}
	open := map[*websocket.Conn]bool{}
	connect := func(tr *testRelay) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, btw, "race"), nil)
		if err != nil {
			t.Errorf("dial: %v", err)
			return
		}
		t.Cleanup(func() { ws.CloseNow() })
		mu.Lock()
		open[ws] = true
		mu.Unlock()
		go func() {
			for {
				_, b, err := ws.Read(context.Background())
				mu.Lock()
				if err != nil {
					if st := websocket.CloseStatus(err); st != statusReplaced && !finished.Load() {
						t.Errorf("connection closed with %v, want 4000", err)
					}
					delete(open, ws)
					mu.Unlock()
					return
				}
				e, uerr := envelope.Unmarshal(b, 0)
				if uerr == nil {
					seen[string(e.GetPlain())]++
				}
				mu.Unlock()
			}
		}()
	}

	const rounds, perRound = 25, 8
	n := 0
	for round := range rounds {
		// Envelopes in flight while the two connect.
		for range perRound {
			a.send(btw.num, "race", fmt.Sprint("m", n))
			n++
		}
		x, y := c.relays[round%3], c.relays[(round+1)%3]
		var wg sync.WaitGroup
		for _, tr := range []*testRelay{x, y} {
			wg.Add(1)
			go func() { defer wg.Done(); connect(tr) }()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		waitFor(t, 30*time.Second, func() error {
			holders := 0
			for _, r := range c.relays {
				if r.lookup(key) != nil {
					holders++
				}
			}
			mu.Lock()
			o := len(open)
			mu.Unlock()
			if holders != 1 || o != 1 {
				return fmt.Errorf("round %d: %d instances hold the session, %d connections open", round, holders, o)
			}
			return nil
		})
	}
	waitFor(t, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) < n {
			return fmt.Errorf("%d of %d envelopes delivered", len(seen), n)
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond) // a late duplicate would show now
	mu.Lock()
	defer mu.Unlock()
	for p, k := range seen {
		if k != 1 {
			t.Errorf("%s delivered %d times", p, k)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct envelopes, want %d", len(seen), n)
	}
	// The lease names the surviving connection's instance.
	v, err := c.rdb.HGet(context.Background(), c.relays[0].cl.leaseKey(btw.num), leaseField("race")).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range c.relays {
		if r.lookup(key) != nil && !strings.Contains(v, "|"+r.opts.Instance+"/") {
			t.Fatalf("lease %q, holder %s", v, r.opts.Instance)
		}
	}
}

// BenchmarkClusterRedisLimits measures the Redis scripts of the cluster
// limits against a real redis-server: a claim per connection (a twin with
// 8 live leases), a refresh per session and 10 s, a rate chunk per 1/16 of
// a twin's limit.
func BenchmarkClusterRedisLimits(b *testing.B) {
	rs := redistest.Start(b, nil)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	ctx := context.Background()
	key := "rmb:relay:sess:bench:{1}"
	for i := range 8 {
		claimScript.Run(ctx, rdb, []string{key}, leaseField(fmt.Sprint("live", i)), "i/x", 30000, 64)
	}
	b.Run("claim", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if err := claimScript.Run(ctx, rdb, []string{key}, leaseField("s"), fmt.Sprint("i/", i), 30000, 64).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("refresh", func(b *testing.B) {
		for b.Loop() {
			if err := refreshScript.Run(ctx, rdb, []string{key}, leaseField("live0"), "i/x", 30000).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rate", func(b *testing.B) {
		for b.Loop() {
			if err := rateScript.Run(ctx, rdb, []string{"rmb:relay:rate:bench:{1}"}, 1<<30, 0, 60000, 1, 0).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
