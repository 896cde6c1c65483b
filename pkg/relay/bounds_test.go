package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
)

// TestStoreTwinAndTotalCaps: made-up session ids do not multiply the
// per-session caps (the twin's sessions share one), and the store as a
// whole has a byte cap; popping frees both.
func TestStoreTwinAndTotalCaps(t *testing.T) {
	srv := redistest.Start(t, nil)
	for _, tc := range []struct {
		name string
		// What a 10-byte envelope counts against the twin's and the
		// total cap: Redis keeps the 8-byte deadline with it, the memory
		// store counts its bookkeeping in the total.
		unit, totalUnit int64
		new             func(*StoreOptions) Store
	}{
		{"mem", 10, 10 + MemOverhead, func(o *StoreOptions) Store { return NewMemStore(o) }},
		{"redis", 18, 18, func(o *StoreOptions) Store {
			o.Prefix = fmt.Sprintf("caps%d:", time.Now().UnixNano())
			return newRedisStore(t, srv, o)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			now := time.Now()
			m := Message{Data: []byte("0123456789"), Deadline: now.Add(time.Minute)}
			s := tc.new(&StoreOptions{MaxMessages: 100, MaxBytes: 1000, MaxTwinMessages: 3, MaxTwinBytes: 5 * tc.unit / 2, MaxTotalBytes: 1 << 20})
			for i := range 2 {
				if err := s.Push(ctx, SessionKey{Twin: 7, SID: fmt.Sprint("made-up-", i)}, m); err != nil {
					t.Fatal(err)
				}
			}
			// Bytes: 3 units > 2.5.
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "made-up-x"}, m); !errors.Is(err, ErrTwinQueueFull) || !errors.Is(err, ErrQueueFull) {
				t.Fatalf("third envelope of twin 7 over its byte cap: %v", err)
			}
			if err := s.Push(ctx, SessionKey{Twin: 8}, m); err != nil {
				t.Fatalf("another twin: %v", err)
			}
			if got, _, _ := s.Pop(ctx, SessionKey{Twin: 7, SID: "made-up-0"}, 10, now); len(got) != 1 {
				t.Fatalf("pop: %v", got)
			}
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "made-up-x"}, m); err != nil {
				t.Fatalf("after a pop the twin has room again: %v", err)
			}

			// Messages: three tiny ones, the fourth refused.
			s = tc.new(&StoreOptions{MaxTwinMessages: 3, MaxTotalBytes: 1 << 20})
			tiny := Message{Data: []byte("x"), Deadline: now.Add(time.Minute)}
			for i := range 3 {
				if err := s.Push(ctx, SessionKey{Twin: 7, SID: fmt.Sprint(i)}, tiny); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Push(ctx, SessionKey{Twin: 7, SID: "3"}, tiny); !errors.Is(err, ErrTwinQueueFull) {
				t.Fatalf("fourth envelope of twin 7 over its message cap: %v", err)
			}

			// Total: three envelopes of three twins, the fourth twin refused.
			s = tc.new(&StoreOptions{MaxTotalBytes: 3 * tc.totalUnit})
			for i := range 3 {
				if err := s.Push(ctx, SessionKey{Twin: uint32(10 + i)}, m); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Push(ctx, SessionKey{Twin: 20}, m); !errors.Is(err, ErrStoreFull) || !errors.Is(err, ErrQueueFull) {
				t.Fatalf("push over the total cap: %v", err)
			}
			s.Pop(ctx, SessionKey{Twin: 11}, 10, now)
			if err := s.Push(ctx, SessionKey{Twin: 20}, m); err != nil {
				t.Fatalf("after a pop the store has room again: %v", err)
			}
			if err := s.Requeue(ctx, SessionKey{Twin: 11}, []Message{m}); err != nil {
				t.Fatalf("requeue ignores the caps: %v", err)
			}
		})
	}
}

// TestRedisStoreForgetsExpiredQueues: the queues whose keys Redis expired
// (a twin that never came back) no longer count against the twin's and the
// store's caps.
func TestRedisStoreForgetsExpiredQueues(t *testing.T) {
	srv := redistest.Start(t, nil)
	ctx := context.Background()
	s := newRedisStore(t, srv, &StoreOptions{MaxTwinMessages: 2, MaxTotalBytes: 3 * 18})
	m := Message{Data: []byte("0123456789"), Deadline: time.Now().Add(time.Minute)}
	for _, k := range []SessionKey{{Twin: 7, SID: "a"}, {Twin: 7, SID: "b"}, {Twin: 9}} {
		if err := s.Push(ctx, k, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Push(ctx, SessionKey{Twin: 7, SID: "c"}, m); !errors.Is(err, ErrTwinQueueFull) {
		t.Fatalf("twin 7 full: %v", err)
	}
	// Let the keys of 7:a and of twin 9 expire, as Redis would once their
	// time came: the key goes, the index still says when.
	past := time.Now().Add(-5 * time.Second).UnixMilli()
	expire := func(k SessionKey) {
		keys, _, sid := s.keys(k)
		s.client.PExpireAt(ctx, keys[0], time.UnixMilli(past))
		s.client.ZAdd(ctx, keys[2], redisZ(past, sid))
		if k.Twin == 9 {
			s.client.Del(ctx, keys[1], keys[2])
			s.client.ZAdd(ctx, keys[4], redisZ(past, "9"))
		}
	}
	expire(SessionKey{Twin: 7, SID: "a"})
	expire(SessionKey{Twin: 9})
	if err := s.Push(ctx, SessionKey{Twin: 7, SID: "c"}, m); err != nil {
		t.Fatalf("twin 7 after its queue a expired: %v", err)
	}
	keys, _, _ := s.keys(SessionKey{Twin: 7})
	total, _ := s.client.HGet(ctx, keys[3], "b").Int()
	n, _ := s.client.HGet(ctx, keys[1], "n").Int()
	if total != 2*18 || n != 2 {
		t.Fatalf("after expiry: store total %d bytes (want 36), twin 7 %d messages (want 2)", total, n)
	}
}

// TestDeadlineTooFar: an envelope whose deadline lies beyond now + MaxTTL +
// the clock skew is refused on the WebSocket path as on federation, with
// an error envelope that says why.
func TestDeadlineTooFar(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	far := request(t, a, "", b.num, "", "far", 1<<40)
	ca.sendRaw(marshal(t, far))
	ca.expectError(far.Uid, msgFuture)
	edge := request(t, a, "", b.num, "", "edge", envelope.MaxTTL+30)
	ca.sendRaw(marshal(t, edge))
	if n := dropped(tr.Relay, dropFuture); n != 1 {
		t.Fatalf("future drops = %d, want 1", n)
	}
	cb := dial(t, tr, b, "")
	cb.expectPayload("edge") // within the skew: delivered
	cb.expectNothing(100 * time.Millisecond)
}

func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}

// TestStalledBodyClosed: a request that stalls its body (federation POST /
// here) is answered and closed once ReadTimeout passed; the event stream of
// the status page outlives it.
func TestStalledBodyClosed(t *testing.T) {
	reg := startRegistrar(t)
	tr := startRelay(t, reg, &Options{ReadTimeout: 300 * time.Millisecond}, nil, nil)
	nc, err := net.Dial("tcp", tr.domain)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 1000\r\n\r\n0123456789")
	start := time.Now()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(nc) // ends when the relay closes the connection
	if err != nil {
		t.Fatalf("the relay kept a stalled request open: %v (read %q)", err, b)
	}
	t.Logf("stalled POST closed after %v: %q", time.Since(start).Round(time.Millisecond), firstLine(b))
	if n := tr.Stats().Refused["read_timeout"]; n != 1 {
		t.Errorf("refused read_timeout = %d, want 1", n)
	}

	resp, err := http.Get("http://" + tr.domain + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	events := 0
	for events < 2 && sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			events++
		}
	}
	if events < 2 {
		t.Fatalf("event stream ended after %d events: %v", events, sc.Err())
	}
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\r\n")
	return line
}

// TestSessionBounds: a twin's concurrent sessions and those from one
// address are bounded; a live session id may always reconnect.
func TestSessionBounds(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{MaxSessionsPerTwin: 2, MaxSessionsPerAddress: 3}, ln, nil)
	refusedWith := func(tw *twin, sid string) int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, tw, sid), nil)
		if err == nil {
			c.CloseNow()
			return 0
		}
		if resp == nil {
			t.Fatalf("dial %d:%s: %v", tw.num, sid, err)
		}
		return resp.StatusCode
	}
	dial(t, tr, a, "one")
	two := dial(t, tr, a, "two")
	// The handshake's answer can reach the client before the relay has
	// registered the session; a reconnect of "one" before that would be a
	// third session, not a replacement.
	waitSession(t, tr.Relay, SessionKey{a.num, "one"}, true)
	waitSession(t, tr.Relay, SessionKey{a.num, "two"}, true)
	if st := refusedWith(a, "three"); st != http.StatusTooManyRequests {
		t.Fatalf("third session of a twin at 2: status %d, want 429", st)
	}
	dial(t, tr, a, "one") // replaces: let in
	// The replaced session counts against the address until it ended.
	waitFor(t, 20*time.Second, func() error {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if n := tr.perAddr["127.0.0.1"]; n != 2 {
			return fmt.Errorf("%d sessions counted for 127.0.0.1", n)
		}
		return nil
	})
	dial(t, tr, b, "") // the third from 127.0.0.1
	if st := refusedWith(b, "x"); st != http.StatusTooManyRequests {
		t.Fatalf("fourth session from an address at 3: status %d, want 429", st)
	}
	two.c.CloseNow()
	waitSession(t, tr.Relay, SessionKey{a.num, "two"}, false)
	waitFor(t, 20*time.Second, func() error {
		if st := refusedWith(a, "three"); st != 0 {
			return fmt.Errorf("after a session ended, a new one: status %d", st)
		}
		return nil
	})
	st := tr.Stats()
	if st.Refused["twin_sessions"] < 1 || st.Refused["address_sessions"] != 1 {
		t.Fatalf("refused: %v", st.Refused)
	}
}

// TestClientAddr: X-Forwarded-For counts only from a trusted proxy.
func TestClientAddr(t *testing.T) {
	r := &Relay{opts: Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	for _, tc := range []struct {
		remote, xff, want string
	}{
		{"192.0.2.7:5000", "", "192.0.2.7"},
		{"192.0.2.7:5000", "198.51.100.1", "192.0.2.7"}, // not a proxy: its claim is ignored
		{"10.1.2.3:5000", "", "10.1.2.3"},
		{"10.1.2.3:5000", "198.51.100.1", "198.51.100.1"},
		{"10.1.2.3:5000", "203.0.113.9, 198.51.100.1, 10.9.9.9", "198.51.100.1"}, // the nearest untrusted hop
		{"10.1.2.3:5000", "garbage, 10.9.9.9", "10.9.9.9"},
		{"[::ffff:10.1.2.3]:5000", "198.51.100.1", "198.51.100.1"},
		{"[2001:db8:1:2:3:4:5:6]:5000", "", "2001:db8:1:2::/64"}, // IPv6: its /64
		{"10.1.2.3:5000", "2001:db8:1:2::9", "2001:db8:1:2::/64"},
	} {
		req := &http.Request{RemoteAddr: tc.remote, Header: http.Header{}}
		if tc.xff != "" {
			req.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := r.clientAddr(req); got != tc.want {
			t.Errorf("%s with X-Forwarded-For %q: %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}

// TestRulesGovernRequests: with the example of docs/operations.md ("anyone
// may call b"), b's answers reach their callers; b's own requests to them
// are denied.
func TestRulesGovernRequests(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	rules, err := ParseRules(fmt.Appendf(nil, "- from: \"*\"\n  to: [%d]\n", b.num))
	if err != nil {
		t.Fatal(err)
	}
	tr := startRelay(t, reg, &Options{Policy: &Policy{Rules: rules}}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	req := ca.send(b.num, "", "call")
	cb.expectPayload("call")
	resp := envelope.NewResponse(req.Uid, []byte("answer"), 60)
	resp.Source = envelope.NewAddress(b.num, "")
	resp.Destination = envelope.NewAddress(a.num, "")
	resp.Stamp(time.Now())
	resp.Sign(b.id)
	cb.sendRaw(marshal(t, resp))
	ca.expectPayload("answer")
	denied := cb.send(a.num, "", "b calls a")
	cb.expectError(denied.Uid, msgDenied)
	ca.expectNothing(50 * time.Millisecond)
}

// TestDestinationTwinZero: twin 0 (the relay's own address) is refused
// without a registrar lookup.
func TestDestinationTwinZero(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	e := ca.send(0, "", "to the relay")
	ca.expectError(e.Uid, msgNoTwin)
	if n := dropped(tr.Relay, dropInvalidDest); n != 1 {
		t.Fatalf("invalid_destination drops = %d, want 1", n)
	}
}

// TestRedisStoreIndexesRequeuedTwin: a twin whose queue was popped empty
// and then requeued is indexed again for the store total, so its bytes are
// subtracted when its keys expire.
func TestRedisStoreIndexesRequeuedTwin(t *testing.T) {
	srv := redistest.Start(t, nil)
	ctx := context.Background()
	s := newRedisStore(t, srv, nil)
	k := SessionKey{Twin: 7, SID: "a"}
	m := Message{Data: []byte("0123456789"), Deadline: time.Now().Add(time.Minute)}
	if err := s.Push(ctx, k, m); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Pop(ctx, k, 10, time.Now())
	if err != nil || len(got) != 1 {
		t.Fatalf("pop: %v %v", got, err)
	}
	if err := s.Requeue(ctx, k, got); err != nil {
		t.Fatal(err)
	}
	keys, _, _ := s.keys(k)
	if _, err := s.client.ZScore(ctx, keys[4], "7").Result(); err != nil {
		t.Fatalf("twin 7 holds a requeued envelope but is not indexed: %v", err)
	}
	if b, _ := s.client.HGet(ctx, keys[3], "7").Int(); b != 18 {
		t.Fatalf("total counts %d bytes for twin 7, want 18", b)
	}
}
