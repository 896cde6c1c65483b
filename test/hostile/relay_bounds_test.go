package hostile

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/wsframe"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/test/harness"
)

// The attacks of issue 13 on the relay's key spaces and queues, each
// against the real processes, each asserting its bound and that honest
// traffic keeps working during and after it.

// peerCallWorks proves the bus works without a new session: a request from
// peer A's Redis to peer B's echo service is answered.
func (s *stack) peerCallWorks(id string) {
	s.t.Helper()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	bot := harness.NewBot(s.rdbA, "bounds-"+id, "echo", 30)
	go bot.Collect(ctx)
	if err := bot.Push(ctx, id, []uint32{s.b.Twin}); err != nil {
		s.t.Fatal(err)
	}
	if err := bot.WaitDone(ctx, 30*time.Second); err != nil {
		s.t.Fatalf("call through the peers: %v\n%s", err, s.c.Logs(20))
	}
	if tally := harness.Count(bot, nil, nil); tally.Answered != 1 {
		s.t.Fatalf("call through the peers: %s", tally)
	}
}

// envelopeTo is a signed request from tw to dst:dsid.
func envelopeTo(tw *twin, dst uint32, dsid string, payload []byte, ttl uint64) *envelope.Envelope {
	e := envelope.NewRequest(newUID(), "park", payload, ttl)
	e.Source = envelope.NewAddress(tw.n, "")
	e.Destination = envelope.NewAddress(dst, dsid)
	e.Stamp(time.Now())
	e.Sign(tw.id)
	return e
}

// countErrors reads c until ctx ends and counts the error envelopes it
// gets, by message.
func countErrors(ctx context.Context, c *client) func() map[string]int {
	var mu sync.Mutex
	got := map[string]int{}
	go func() {
		for {
			_, b, err := c.conn.Read(ctx)
			if err != nil {
				return
			}
			if e, err := envelope.Unmarshal(b, 0); err == nil && e.IsError() {
				mu.Lock()
				got[e.GetError().GetMessage()]++
				mu.Unlock()
			}
		}
	}()
	return func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range got {
			out[k] = v
		}
		return out
	}
}

// TestFarFutureDeadline: an envelope whose deadline lies beyond now +
// MaxTTL + the clock skew gets an error envelope that says why, on the
// WebSocket path as over federation; nothing is delivered.
func TestFarFutureDeadline(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	c := s.dial(x)
	e := request(x, s.b.Twin, "echo", []byte("far-future"), 1<<40)
	c.send(e)
	got := c.expectError(e.Uid, 0, envelope.CodeMalformed, 10*time.Second)
	if msg := got.GetError().GetMessage(); !strings.Contains(msg, "deadline too far in the future") {
		t.Errorf("error says %q", msg)
	}
	if code, msg := s.post(marshal(t, request(x, s.b.Twin, "echo", []byte("far-future"), 1<<40))); code != http.StatusBadRequest {
		t.Errorf("federation: %d %s, want 400", code, msg)
	}
	if n := s.relayDropped("future"); n != 2 {
		t.Errorf("dropped_total{future} = %v, want 2 (one per path)", n)
	}
	s.echoWorks(c)
	if n := s.echo.Seen("far-future"); n != 0 {
		t.Errorf("the service got the far-future envelope %d times", n)
	}
}

// TestStoreMadeUpSessions: one twin parks envelopes for an offline twin
// under 400 made-up session ids, then for many offline twins. The store
// holds at most the twin's cap per twin and its total cap in all; the
// sender gets "destination queue is full" and "relay store is full"; the
// janitor sweeps what expired without anyone connecting.
func TestStoreMadeUpSessions(t *testing.T) {
	t.Parallel()
	const (
		twinCap  = 4 << 20
		totalCap = 16 << 20
		size     = 64 << 10
		ttl      = 20
	)
	s := newStack(t, "--queue-twin-max-bytes", strconv.Itoa(twinCap), "--store-max-bytes", strconv.Itoa(totalCap))
	x, victim := s.newTwin(), s.newTwin()
	honest := s.dial(s.newTwin())
	c := s.dial(x)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	errs := countErrors(ctx, c)
	rss0, _ := s.relay.RSS()
	payload := bytes.Repeat([]byte("p"), size)
	// 400 made-up sessions of one twin: 25 MiB offered.
	for i := range 400 {
		c.send(envelopeTo(x, victim.n, fmt.Sprint("made-up-", i), payload, ttl))
	}
	s.echoWorks(honest)
	// 8 more offline twins, 5 MiB each: 40 MiB offered.
	for range 8 {
		w := s.newTwin()
		for range 80 {
			c.send(envelopeTo(x, w.n, "", payload, ttl))
		}
	}
	s.waitFor(30*time.Second, func() error {
		if n := s.relayMetric("rmb_relay_messages_in_total", map[string]string{"via": "websocket"}); n < 400+640 {
			return fmt.Errorf("%v envelopes routed", n)
		}
		return nil
	})
	stored := s.relayMetric("rmb_relay_stored_messages", nil)
	rss1, _ := s.relay.RSS()
	t.Logf("offered 65 MiB to 400 made-up sessions and 8 twins: %v stored (%.1f MiB), relay RSS %d -> %d MiB; dropped twin_queue_full=%v store_full=%v",
		stored, stored*size/(1<<20), rss0>>20, rss1>>20, s.relayDropped("twin_queue_full"), s.relayDropped("store_full"))
	// (A few of them may be small: error envelopes to the sender that
	// waited in the store for its session.)
	if stored > totalCap/size+64 {
		t.Errorf("the store holds %v envelopes of 64 KiB, over its total cap of %d MiB", stored, totalCap>>20)
	}
	if s.relayDropped("twin_queue_full") == 0 || s.relayDropped("store_full") == 0 {
		t.Errorf("no twin_queue_full or no store_full refusal counted")
	}
	if rss1-rss0 > 96<<20 {
		t.Errorf("relay grew by %d MiB for a store capped at %d MiB", (rss1-rss0)>>20, totalCap>>20)
	}
	s.waitFor(10*time.Second, func() error {
		got := errs()
		if got["destination queue is full"] == 0 || got["relay store is full"] == 0 {
			return fmt.Errorf("errors to the sender: %v", got)
		}
		return nil
	})
	s.echoWorks(honest)
	s.peerCallWorks("after-store-flood")
	// Nobody connects: the janitor drops what expired.
	s.waitFor(60*time.Second, func() error {
		if n := s.relayMetric("rmb_relay_stored_messages", nil); n != 0 {
			return fmt.Errorf("%v envelopes still stored after their TTL", n)
		}
		return nil
	})
	if n := s.relayDropped("store_expired"); n < stored-64 {
		t.Errorf("dropped_total{store_expired} = %v, but %v were stored", n, stored)
	}
}

// TestRedisStoreMadeUpSessions: the same attack on a relay that keeps its
// queues in Redis: Redis holds at most the twin's cap.
func TestRedisStoreMadeUpSessions(t *testing.T) {
	t.Parallel()
	const twinCap = 4 << 20
	s := newStack(t)
	rs, err := s.c.Redis(false)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	rr, err := s.c.StartRelay(s.ctx, s.reg, harness.RelayOptions{Name: "relay-redis", Redis: rs.URL(),
		Extra: []string{"--queue-twin-max-bytes", strconv.Itoa(twinCap)}})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.c.Logs(20))
	}
	home := func() *twin {
		tw := s.newTwin()
		if _, err := s.reg.Client.Update(s.ctx, tw.id, tw.n, []string{rr.Addr}, nil); err != nil {
			t.Fatal(err)
		}
		return tw
	}
	x, victim, p, q := home(), home(), home(), home()
	dial := func(tw *twin) *client {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, rr.URL()+"/?"+token(t, tw.id, tw.n, "", time.Now(), time.Minute), nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(4 << 20)
		t.Cleanup(func() { c.CloseNow() })
		return &client{t: t, tw: tw, conn: c}
	}
	pairWorks := func(cp, cq *client) {
		e := request(p, q.n, "ping", []byte("honest"), 30)
		cp.send(e)
		if got := cq.expectAnswer(e.Uid, 15*time.Second); string(got.GetPlain()) != "honest" {
			t.Fatalf("q got %v", got)
		}
	}
	cp, cq := dial(p), dial(q)
	mem := func() int64 {
		n, _ := strconv.ParseInt(infoField(s.ctx, rdb, "used_memory"), 10, 64)
		return n
	}
	mem0 := mem()
	c := dial(x)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	errs := countErrors(ctx, c)
	payload := bytes.Repeat([]byte("r"), 64<<10)
	for i := range 400 {
		c.send(envelopeTo(x, victim.n, fmt.Sprint("made-up-", i), payload, 60))
		if i == 200 {
			pairWorks(cp, cq)
		}
	}
	s.waitFor(30*time.Second, func() error {
		if got := errs()["destination queue is full"]; got < 300 {
			return fmt.Errorf("%d queue-full errors", got)
		}
		return nil
	})
	m, err := rr.Metrics(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := rdb.DBSize(s.ctx).Result()
	grown := mem() - mem0
	t.Logf("offered 25 MiB under 400 made-up sessions: Redis used_memory +%d KiB, %d keys; dropped twin_queue_full=%v",
		grown>>10, keys, m.Sum("rmb_relay_dropped_total", map[string]string{"reason": "twin_queue_full"}))
	if grown > twinCap+8<<20 {
		t.Errorf("Redis grew by %d MiB, the twin's cap is %d MiB", grown>>20, twinCap>>20)
	}
	if keys > twinCap/(64<<10)+16 {
		t.Errorf("%d Redis keys for one twin's %d MiB", keys, twinCap>>20)
	}
	pairWorks(cp, cq)
}

// infoField reads one field of Redis INFO.
func infoField(ctx context.Context, rdb *redis.Client, field string) string {
	info, _ := rdb.Info(ctx, "memory").Result()
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return v
		}
	}
	return ""
}

// TestAnnouncedFrames: sessions that each announce a 1 MiB frame and send
// 30 bytes of it cost the relay what they sent, not what they announced.
func TestAnnouncedFrames(t *testing.T) {
	t.Parallel()
	const sessions = 120 // 120 MiB announced
	s := newStack(t)
	honest := s.dial(s.newTwin())
	rss0, _ := s.relay.RSS()
	heap0 := s.relayMetric("go_memstats_heap_alloc_bytes", nil)
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range sessions {
		tw := s.newTwin() // one per few sessions: under the per-twin bound
		for j := range 4 {
			if len(conns) == sessions {
				break
			}
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			wc, err := wsframe.Dial(ctx, s.relay.URL()+"/?"+token(t, tw.id, tw.n, fmt.Sprint("s", i, "-", j), time.Now(), time.Minute), nil)
			cancel()
			if err != nil {
				t.Fatalf("session %d: %v", len(conns), err)
			}
			nc := wc.NetConn()
			// A masked binary frame announcing 1 MiB, mask key 0: the
			// payload goes as is.
			frame := []byte{0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			binary.BigEndian.PutUint64(frame[2:10], 1<<20)
			nc.Write(append(frame, make([]byte, 30)...))
			conns = append(conns, nc)
		}
		if len(conns) == sessions {
			break
		}
	}
	s.echoWorks(honest)
	var rss1 int64
	// Let the relay read what was sent; it must not grow by what was
	// announced.
	s.waitFor(10*time.Second, func() error {
		if n := s.relayMetric("rmb_relay_sessions", nil); n < sessions+3 {
			return fmt.Errorf("%v sessions", n)
		}
		return nil
	})
	s.echoWorks(honest)
	rss1, _ = s.relay.RSS()
	heap1 := s.relayMetric("go_memstats_heap_alloc_bytes", nil)
	t.Logf("%d sessions announced 1 MiB frames and sent 30 bytes: relay RSS %d -> %d MiB, Go heap %.0f -> %.0f MiB",
		sessions, rss0>>20, rss1>>20, heap0/(1<<20), heap1/(1<<20))
	// (Untouched pages of a large allocation need not be resident: the
	// heap is what shows a reservation.)
	if rss1-rss0 > 48<<20 || heap1-heap0 > 48<<20 {
		t.Errorf("relay grew by %d MiB RSS, %.0f MiB heap for %d frames of 30 bytes", (rss1-rss0)>>20, (heap1-heap0)/(1<<20), sessions)
	}
	s.peerCallWorks("after-announced-frames")
}

// TestStalledPosts: federation POSTs that stall their bodies are closed
// once --read-timeout passed, without any credential; the relay's
// goroutines come back down.
func TestStalledPosts(t *testing.T) {
	t.Parallel()
	const posts = 500
	s := newStack(t, "--read-timeout", "3s")
	honest := s.dial(s.newTwin())
	g0 := s.relayMetric("go_goroutines", nil)
	conns := make([]net.Conn, 0, posts)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	start := time.Now()
	for i := range posts {
		nc, err := net.Dial("tcp", s.relay.Addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		fmt.Fprintf(nc, "POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 100000\r\n\r\nstalled")
		conns = append(conns, nc)
	}
	s.echoWorks(honest)
	var open atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(45 * time.Second)
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc.SetReadDeadline(deadline)
			if _, err := io.Copy(io.Discard, nc); err != nil {
				open.Add(1) // our deadline: the relay never closed it
			}
		}()
	}
	wg.Wait()
	t.Logf("%d stalled POSTs closed by the relay within %v; %d still open", posts, time.Since(start).Round(time.Second), open.Load())
	if open.Load() > 0 {
		t.Errorf("%d of %d stalled POSTs were never closed", open.Load(), posts)
	}
	if n := s.relayMetric("rmb_relay_refused_total", map[string]string{"reason": "read_timeout"}); n != posts {
		t.Errorf("refused_total{read_timeout} = %v, want %d", n, posts)
	}
	s.waitFor(15*time.Second, func() error {
		if g := s.relayMetric("go_goroutines", nil); g > g0+20 {
			return fmt.Errorf("relay goroutines %v, were %v before", g, g0)
		}
		return nil
	})
	s.echoWorks(honest)
}

// TestSessionFlood: one twin opening sessions under made-up ids, and many
// twins from one address (claiming other addresses in X-Forwarded-For,
// which the relay does not trust), are refused with 429 past their
// bounds; the peers' sessions and calls are unaffected.
func TestSessionFlood(t *testing.T) {
	t.Parallel()
	const perTwin, perAddr = 10, 40
	s := newStack(t, "--max-sessions-per-twin", strconv.Itoa(perTwin), "--max-sessions-per-address", strconv.Itoa(perAddr))
	dialSID := func(tw *twin, sid string) (*websocket.Conn, int) {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		defer cancel()
		hdr := http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", rand.IntN(250)+1)}}
		c, resp, err := websocket.Dial(ctx, s.relay.URL()+"/?"+token(t, tw.id, tw.n, sid, time.Now(), time.Minute),
			&websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			if resp == nil {
				t.Fatalf("dial: %v", err)
			}
			return nil, resp.StatusCode
		}
		t.Cleanup(func() { c.CloseNow() })
		return c, http.StatusSwitchingProtocols
	}
	x := s.newTwin()
	statuses := map[int]int{}
	for i := range 3 * perTwin {
		_, st := dialSID(x, fmt.Sprint("made-up-", i))
		statuses[st]++
	}
	if statuses[http.StatusSwitchingProtocols] != perTwin || statuses[http.StatusTooManyRequests] != 2*perTwin {
		t.Errorf("one twin, %d sessions: %v, want %d let in and the rest 429", 3*perTwin, statuses, perTwin)
	}
	s.peerCallWorks("during-twin-flood")
	// More twins from the same address: the address fills up (the two
	// peers count, they connect from 127.0.0.1 too).
	statuses = map[int]int{}
	for range 6 {
		tw := s.newTwin()
		for j := range perTwin {
			_, st := dialSID(tw, fmt.Sprint(j))
			statuses[st]++
		}
	}
	want := perAddr - 2 - perTwin
	if statuses[http.StatusSwitchingProtocols] != want {
		t.Errorf("one address: %v, want %d let in", statuses, want)
	}
	if n := s.relayMetric("rmb_relay_sessions", nil); n != perAddr {
		t.Errorf("%v sessions live, want the address's bound %d", n, perAddr)
	}
	m, _ := s.relay.Metrics(s.ctx)
	t.Logf("refused: twin_sessions=%v address_sessions=%v", m.Sum("rmb_relay_refused_total", map[string]string{"reason": "twin_sessions"}),
		m.Sum("rmb_relay_refused_total", map[string]string{"reason": "address_sessions"}))
	if m.Sum("rmb_relay_refused_total", map[string]string{"reason": "twin_sessions"}) < 2*perTwin ||
		m.Sum("rmb_relay_refused_total", map[string]string{"reason": "address_sessions"}) == 0 {
		t.Errorf("refusals not counted")
	}
	s.peerCallWorks("during-address-flood")
}

// TestLookupFlood: connection attempts with tokens for made-up twins (the
// relay looks the twin up before it can check the signature) and envelopes
// to twin 0 are refused; the relay keeps serving.
func TestLookupFlood(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	c := s.dial(x)
	statuses := map[int]int{}
	for i := range 500 {
		_, st, _ := s.dialToken(token(t, x.id, uint32(1_000_000+i), "", time.Now(), time.Minute))
		statuses[st]++
	}
	if statuses[http.StatusUnauthorized] != 500 {
		t.Errorf("tokens of made-up twins: %v, want 401 for all", statuses)
	}
	e := request(x, 0, "echo", []byte("to-zero"), 30)
	c.send(e)
	c.expectError(e.Uid, 0, envelope.CodeNotFound, 10*time.Second)
	if n := s.relayDropped("invalid_destination"); n != 1 {
		t.Errorf("dropped_total{invalid_destination} = %v, want 1", n)
	}
	s.echoWorks(c)
	s.peerCallWorks("after-lookups")
}

// TestRulesDeliverAnswers: with the --rules example of docs/operations.md
// (anyone may call the service twin), the service's answers reach their
// callers through the peers; the service's own requests are denied.
func TestRulesDeliverAnswers(t *testing.T) {
	t.Parallel()
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte("- from: \"*\"\n  to: [4000000000]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStack(t, "--rules", rules)
	// Now that B's twin is known: anyone may call B, as in the docs.
	if err := os.WriteFile(rules, fmt.Appendf(nil, "- from: \"*\"\n  to: [%d]\n", s.b.Twin), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(s.relay.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.waitFor(15*time.Second, func() error {
		if !strings.Contains(s.relay.Tail(50), "policy reloaded") {
			return fmt.Errorf("no reload yet")
		}
		return nil
	})
	s.peerCallWorks("answered-under-rules")
	x := s.newTwin()
	c := s.dial(x)
	s.echoWorks(c)
	// B may not call x.
	bc := s.dialB()
	e := envelope.NewRequest(newUID(), "echo", []byte("denied"), 30)
	e.Source = envelope.NewAddress(s.b.Twin, "raw")
	e.Destination = envelope.NewAddress(x.n, "")
	e.Stamp(time.Now())
	e.Sign(s.b.Identity)
	bc.send(e)
	bc.expectError(e.Uid, 0, envelope.CodeDenied, 10*time.Second)
}

// dialB opens a raw session of peer B's twin (sid "raw", beside the peer's).
func (s *stack) dialB() *client {
	s.t.Helper()
	tw := &twin{id: s.b.Identity, n: s.b.Twin}
	c, status, err := s.dialToken(token(s.t, tw.id, tw.n, "raw", time.Now(), time.Minute))
	if err != nil {
		s.t.Fatalf("dial B: %d %v", status, err)
	}
	s.t.Cleanup(func() { c.CloseNow() })
	return &client{t: s.t, tw: tw, conn: c}
}
