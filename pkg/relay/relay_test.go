package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
)

func TestAuth(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	tw := reg.newTwin(t, domain)
	other := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{TokenPolicy: identity.TokenPolicy{MaxLifetime: 10 * time.Minute, ClockSkew: 5 * time.Second}}, ln, nil)

	now := time.Now()
	mk := func(id *identity.Identity, num uint32, iat time.Time, life time.Duration) string {
		tok, err := identity.NewToken(id, num, "", iat, life)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := mk(tw.id, tw.num, now, time.Minute)
	for _, tc := range []struct {
		name   string
		query  string
		status int
		reason string
	}{
		{"no token", "", 400, "missing token"},
		{"malformed", "not-a-jwt", 400, "malformed token"},
		{"bad base64", "a.b.c", 400, "malformed token"},
		{"expired", mk(tw.id, tw.num, now.Add(-time.Hour), time.Minute), 401, "expired"},
		{"too long-lived", mk(tw.id, tw.num, now, time.Hour), 401, "lifetime"},
		{"from the future", mk(tw.id, tw.num, now.Add(time.Hour), time.Minute), 401, "future"},
		{"unknown twin", mk(tw.id, 999999, now, time.Minute), 401, "unknown twin"},
		{"bad signature", mk(other.id, tw.num, now, time.Minute), 401, "bad signature"},
		{"tampered", good[:len(good)-3] + "AAA", 401, "bad signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+tc.query, nil)
			if err == nil {
				c.CloseNow()
				t.Fatal("connected")
			}
			if resp == nil {
				t.Fatalf("no HTTP answer: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.reason)
			}
		})
	}
	// And the good token connects, on any path.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+tr.domain+"/some/path?"+good, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseNow()
	if n := tr.counters.authFailures.Load(); n != 9 {
		t.Errorf("auth failures = %d, want 9", n)
	}
}

func TestLocalDeliveryPingWrongSource(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "app")
	waitSession(t, tr.Relay, SessionKey{b.num, "app"}, true)

	// a -> b:app and the answer back to a's default session.
	req := ca.send(b.num, "app", "hello")
	got := cb.expectPayload("hello")
	if got.Uid != req.Uid || got.GetSource().GetTwin() != a.num {
		t.Fatalf("got %v", got)
	}
	if err := got.Verify(a.id.PublicKey()); err != nil {
		t.Fatalf("relay changed the envelope: %v", err)
	}
	resp := envelope.NewResponse(got.Uid, []byte("world"), 60)
	resp.Source = envelope.NewAddress(b.num, "app")
	resp.Destination = envelope.NewAddress(a.num, "")
	resp.Stamp(time.Now())
	resp.Sign(b.id)
	cb.sendRaw(marshal(t, resp))
	ca.expectPayload("world")

	// App-level ping.
	ping := envelope.NewPing("p1", 60)
	ping.Source = envelope.NewAddress(a.num, "")
	ping.Stamp(time.Now())
	ca.sendRaw(marshal(t, ping))
	pong := ca.recv()
	if !pong.IsPong() || pong.Uid != "p1" || pong.GetDestination().GetTwin() != a.num {
		t.Fatalf("want pong, got %v", pong)
	}
	// Wrong source: a claims to be b; and a claims another sid of itself.
	forged := request(t, b, "app", a.num, "", "x", 60)
	ca.sendRaw(marshal(t, forged))
	ca.expectError(forged.Uid, "message wrong source")
	wrongSID := request(t, a, "other", b.num, "app", "x", 60)
	ca.sendRaw(marshal(t, wrongSID))
	ca.expectError(wrongSID.Uid, "message wrong source")
	// A response with a wrong source is dropped without an answer.
	resp2 := envelope.NewResponse("r2", nil, 60)
	resp2.Source = envelope.NewAddress(b.num, "")
	resp2.Destination = envelope.NewAddress(a.num, "")
	resp2.Stamp(time.Now())
	ca.sendRaw(marshal(t, resp2))
	ca.expectNothing(200 * time.Millisecond)
	cb.expectNothing(10 * time.Millisecond)
	if n := dropped(tr.Relay, dropWrongSource); n != 3 {
		t.Errorf("wrong_source drops = %d, want 3", n)
	}

	// Unknown twin destination, and a malformed frame (dropped, connection stays).
	unk := ca.send(4000000, "", "x")
	ca.expectError(unk.Uid, "unknown twin destination")
	ca.sendRaw([]byte{0xff, 0xff, 0xff})
	ca.send(b.num, "app", "still here")
	cb.expectPayload("still here")
	if n := dropped(tr.Relay, dropMalformed); n != 1 {
		t.Errorf("malformed drops = %d, want 1", n)
	}
}

func TestWebSocketPing(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{PingInterval: 100 * time.Millisecond, PingTimeout: 200 * time.Millisecond}, ln, nil)

	// A client that reads (and so answers pings) stays connected.
	alive := dial(t, tr, a, "alive")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			if _, _, err := alive.c.Read(ctx); err != nil {
				return
			}
		}
	}()
	// A client that never reads cannot answer pings and is closed.
	dialSilent(t, tr, a, "dead")
	waitSession(t, tr.Relay, SessionKey{a.num, "dead"}, true)
	waitSession(t, tr.Relay, SessionKey{a.num, "dead"}, false)
	if tr.lookup(SessionKey{a.num, "alive"}) == nil {
		t.Fatal("the live client was closed")
	}
	// And the client's own pings are answered.
	pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer pcancel()
	if err := alive.c.Ping(pctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func TestSessionReplace(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	cb := dial(t, tr, b, "")
	old := dial(t, tr, a, "s")
	waitSession(t, tr.Relay, SessionKey{a.num, "s"}, true)
	first := tr.lookup(SessionKey{a.num, "s"})

	nu := dial(t, tr, a, "s")
	waitFor(t, 20*time.Second, func() error {
		if s := tr.lookup(SessionKey{a.num, "s"}); s == nil || s == first {
			return fmt.Errorf("not replaced yet")
		}
		return nil
	})
	// The old connection is closed with 4000.
	_, err := old.recvWithin(5 * time.Second)
	if st := websocket.CloseStatus(err); st != statusReplaced {
		t.Fatalf("old connection: %v (status %d), want close %d", err, st, statusReplaced)
	}
	// Wait for the old session's cleanup to have run entirely.
	select {
	case <-first.sendDone:
	case <-time.After(5 * time.Second):
		t.Fatal("old session did not end")
	}
	waitFor(t, 20*time.Second, func() error {
		if n := tr.sessionCount(); n != 2 {
			return fmt.Errorf("%d sessions, want 2", n)
		}
		return nil
	})
	// The new session still receives.
	cb.send(a.num, "s", "to the new one")
	nu.expectPayload("to the new one")
	if tr.counters.replaced.Load() != 1 {
		t.Fatal("replacement not counted")
	}
}

func TestOfflineQueueAndTTL(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	clk := &clock{}
	tr := startRelay(t, reg, &Options{Now: clk.Now}, ln, nil)
	ca := dial(t, tr, a, "")

	// b is offline: messages are stored and delivered in order on connect.
	for i := range 20 {
		ca.send(b.num, "", fmt.Sprint("m", i))
	}
	waitFor(t, 20*time.Second, func() error {
		if n, _ := tr.store.Len(context.Background(), SessionKey{b.num, ""}); n != 20 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	cb := dial(t, tr, b, "")
	for i := range 20 {
		cb.expectPayload(fmt.Sprint("m", i))
	}
	// Messages that arrive while connected still come in order after.
	ca.send(b.num, "", "live")
	cb.expectPayload("live")
	cb.c.Close(websocket.StatusNormalClosure, "")
	waitSession(t, tr.Relay, SessionKey{b.num, ""}, false)

	// TTL: a message with a short TTL expires in the queue and is discarded.
	short := request(t, a, "", b.num, "", "short", 30)
	ca.sendRaw(marshal(t, short))
	long := request(t, a, "", b.num, "", "long", 600)
	ca.sendRaw(marshal(t, long))
	waitFor(t, 20*time.Second, func() error {
		if n, _ := tr.store.Len(context.Background(), SessionKey{b.num, ""}); n != 2 {
			return fmt.Errorf("%d stored", n)
		}
		return nil
	})
	clk.Advance(time.Minute)
	cb = dial(t, tr, b, "")
	cb.expectPayload("long")
	cb.expectNothing(100 * time.Millisecond)
	if n := dropped(tr.Relay, dropStoreExpired); n != 1 {
		t.Fatalf("store_expired = %d, want 1", n)
	}
	// An envelope already expired when sent is dropped at once.
	old := request(t, a, "", b.num, "", "old", 30)
	ca.sendRaw(marshal(t, old))
	cb.expectNothing(100 * time.Millisecond)
	if n := dropped(tr.Relay, dropExpired); n != 1 {
		t.Fatalf("expired = %d, want 1", n)
	}
}

func TestFailFast(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, nil, ln, nil)
	ca := dial(t, tr, a, "")
	e := request(t, a, "", b.num, "", "x", 60)
	tags := "foo, fail-fast"
	e.Tags = &tags
	e.Stamp(time.Now())
	e.Sign(a.id)
	ca.sendRaw(marshal(t, e))
	ca.expectError(e.Uid, "destination offline")
	if n, _ := tr.store.Len(context.Background(), SessionKey{b.num, ""}); n != 0 {
		t.Fatalf("fail-fast envelope was stored")
	}
	// With b online, fail-fast is delivered normally.
	cb := dial(t, tr, b, "")
	waitSession(t, tr.Relay, SessionKey{b.num, ""}, true)
	e.Uid = "ff2"
	e.Sign(a.id)
	ca.sendRaw(marshal(t, e))
	cb.expectPayload("x")
}

func TestOversizedFrame(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{MaxEnvelopeSize: 4096}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	ca.send(b.num, "", strings.Repeat("x", 3000)) // fits
	cb.expectPayload(strings.Repeat("x", 3000))
	ca.send(b.num, "", strings.Repeat("x", 5000))
	_, err := ca.recvWithin(5 * time.Second)
	if st := websocket.CloseStatus(err); st != websocket.StatusMessageTooBig {
		t.Fatalf("got %v (status %d), want close 1009", err, st)
	}
	waitFor(t, 20*time.Second, func() error {
		if dropped(tr.Relay, dropTooBig) != 1 {
			return fmt.Errorf("too_big not counted")
		}
		return nil
	})
	cb.expectNothing(50 * time.Millisecond)
}

func TestSlowReceiver(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	slow := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{SendQueueSize: 4, WriteTimeout: time.Hour, PingInterval: time.Hour}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	dialSilent(t, tr, slow, "") // never reads
	waitSession(t, tr.Relay, SessionKey{slow.num, ""}, true)
	waitSession(t, tr.Relay, SessionKey{b.num, ""}, true)

	// Flood the slow receiver until its socket buffers and queue are full
	// and envelopes spill to the store, interleaved with messages to b.
	big := strings.Repeat("z", 64<<10)
	sent := 0
	for i := 0; ; i++ {
		ca.send(slow.num, "", fmt.Sprintf("%06d%s", i, big))
		sent++
		if i%10 == 0 {
			ca.send(b.num, "", fmt.Sprint("b", i))
			cb.expectPayload(fmt.Sprint("b", i))
		}
		if tr.counters.stored.Load() > 10 {
			break
		}
		if i > 2000 {
			t.Fatal("nothing spilled to the store")
		}
	}
	// Others still flow at once, and nothing was dropped.
	start := time.Now()
	for i := range 50 {
		ca.send(b.num, "", fmt.Sprint("after", i))
		cb.expectPayload(fmt.Sprint("after", i))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("50 round trips took %s", d)
	}
	for r := range numDropReasons {
		if n := dropped(tr.Relay, r); n != 0 {
			t.Errorf("dropped %d for %s", n, r)
		}
	}

	// The slow client goes away; what it never read from its socket is
	// lost with it, but everything the relay still held (send queue and
	// store) comes, in order, to its next connection.
	tr.Disconnect(slow.num)
	waitSession(t, tr.Relay, SessionKey{slow.num, ""}, false)
	again := dial(t, tr, slow, "")
	last := -1
	for last != sent-1 {
		e := again.recv()
		n, err := strconv.Atoi(string(e.GetPlain()[:6]))
		if err != nil || n <= last {
			t.Fatalf("got message %d after %d", n, last)
		}
		last = n
	}
}

func TestRateLimit(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	clk := &clock{}
	tr := startRelay(t, reg, &Options{Now: clk.Now, RateLimit: &RateLimit{Messages: 5, Window: time.Minute}}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	for i := range 5 {
		ca.send(b.num, "", fmt.Sprint(i))
		cb.expectPayload(fmt.Sprint(i))
	}
	over := ca.send(b.num, "", "over")
	ca.expectError(over.Uid, "exceeded rate limits")
	cb.expectNothing(50 * time.Millisecond)
	// The bucket refills; the connection is still there.
	clk.Advance(30 * time.Second)
	ca.send(b.num, "", "again")
	cb.expectPayload("again")
	// b has its own bucket.
	cb.send(a.num, "", "from b")
	ca.expectPayload("from b")

	if n := dropped(tr.Relay, dropRateLimited); n != 1 {
		t.Fatalf("rate_limited = %d, want 1", n)
	}
}

func TestRateLimitBytes(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{RateLimit: &RateLimit{Bytes: 3000, Window: time.Hour}}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	ca.send(b.num, "", strings.Repeat("x", 1000))
	cb.expectPayload(strings.Repeat("x", 1000))
	over := ca.send(b.num, "", strings.Repeat("y", 2500))
	ca.expectError(over.Uid, "exceeded rate limits")
	ca.send(b.num, "", "small")
	cb.expectPayload("small")
}

func TestAccessPolicy(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	c := reg.newTwin(t, domain)
	allow, err := ParseAllowList(fmt.Appendf(nil, "- %d\n- %d\n", a.num, b.num))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ParseRules(fmt.Appendf(nil, "rules:\n  - from: %d\n    to: [%d]\n", a.num, b.num))
	if err != nil {
		t.Fatal(err)
	}
	tr := startRelay(t, reg, &Options{Policy: &Policy{Allow: allow, Rules: rules}}, ln, nil)

	// c is not on the allow list.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, c, ""), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("c connected or wrong status: %v %v", err, resp)
	}
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "")
	ca.send(b.num, "", "allowed")
	cb.expectPayload("allowed")
	denied := cb.send(a.num, "", "denied")
	cb.expectError(denied.Uid, "message denied by routing rules")
	ca.expectNothing(50 * time.Millisecond)

	// Reload: everyone may connect, b may send to anyone, a to no one.
	allow2, _ := ParseAllowList([]byte(`["*"]`))
	rules2, _ := ParseRules(fmt.Appendf(nil, "- from: [%d]\n  to: \"*\"\n", b.num))
	tr.SetPolicy(&Policy{Allow: allow2, Rules: rules2})
	cb.send(a.num, "", "now allowed")
	ca.expectPayload("now allowed")
	d2 := ca.send(b.num, "", "now denied")
	ca.expectError(d2.Uid, "message denied by routing rules")
	cc := dial(t, tr, c, "")
	cb.send(c.num, "", "to c")
	cc.expectPayload("to c")

	// Reload again with an allow list without c: only c's session is closed.
	allow3, _ := ParseAllowList(fmt.Appendf(nil, "allow: [%d, %d]", a.num, b.num))
	tr.SetPolicy(&Policy{Allow: allow3})
	_, err = cc.recvWithin(5 * time.Second)
	if st := websocket.CloseStatus(err); st != statusRevoked {
		t.Fatalf("c: %v, want close %d", err, statusRevoked)
	}
	ca.send(b.num, "", "sessions kept")
	cb.expectPayload("sessions kept")
}

func TestPolicyParse(t *testing.T) {
	for _, bad := range []string{"- foo", "- -1", "- {a: 1}", "rules: 5"} {
		if _, err := ParseAllowList([]byte(bad)); err == nil && !strings.HasPrefix(bad, "rules") {
			t.Errorf("allow list %q accepted", bad)
		}
	}
	for _, bad := range []string{"- from: 1", "- from: 1\n  to: x", "- {from: 1, to: 2, extra: 3}", "5"} {
		if _, err := ParseRules([]byte(bad)); err == nil {
			t.Errorf("rules %q accepted", bad)
		}
	}
	r, err := ParseRules([]byte("- from: '*'\n  to: 7\n- from: [1, '2']\n  to: '*'"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst uint32
		want     bool
	}{{9, 7, true}, {9, 8, false}, {1, 8, true}, {2, 100, true}, {3, 100, false}} {
		if got := r.Allowed(tc.src, tc.dst); got != tc.want {
			t.Errorf("Allowed(%d, %d) = %v", tc.src, tc.dst, got)
		}
	}
	empty, _ := ParseRules([]byte("rules: []"))
	if empty.Allowed(1, 2) {
		t.Error("empty rules allowed a route")
	}
}

func TestOperations(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{AdminToken: "sekret"}, ln, nil)
	ca := dial(t, tr, a, "")
	cb := dial(t, tr, b, "x")
	waitSession(t, tr.Relay, SessionKey{b.num, "x"}, true)
	waitFor(t, 20*time.Second, func() error { // its first drain of the store is done
		s := tr.lookup(SessionKey{b.num, "x"})
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.spilled {
			return fmt.Errorf("still spilled")
		}
		return nil
	})
	ca.send(b.num, "x", "hi")
	cb.expectPayload("hi")

	get := func(method, path, tok string) (int, string) {
		req, _ := http.NewRequest(method, tr.srv.URL+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if st, body := get("GET", "/healthz", ""); st != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", st, body)
	}
	st, body := get("GET", "/metrics", "")
	if st != 200 {
		t.Fatalf("metrics: %d", st)
	}
	for _, want := range []string{
		`rmb_relay_messages_in_total{via="websocket"} 1`,
		`rmb_relay_routed_total{result="local"} 1`,
		`rmb_relay_sessions 2`,
		`rmb_relay_dropped_total{reason="expired"} 0`,
		`rmb_relay_routing_seconds_count 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if st, _ := get("GET", "/api/stats", ""); st != 401 {
		t.Fatalf("stats without token: %d", st)
	}
	if st, _ := get("GET", "/api/stats", "wrong"); st != 401 {
		t.Fatalf("stats with wrong token: %d", st)
	}
	st, body = get("GET", "/api/stats", "sekret")
	var stats Stats
	if err := json.Unmarshal([]byte(body), &stats); st != 200 || err != nil {
		t.Fatalf("stats: %d %s %v", st, body, err)
	}
	if stats.Sessions != 2 || stats.MessagesIn != 1 || stats.Routed["local"] != 1 || stats.MessagesOut != 1 {
		t.Fatalf("stats: %+v", stats)
	}
	st, body = get("GET", "/api/sessions", "sekret")
	var list []SessionInfo
	if err := json.Unmarshal([]byte(body), &list); st != 200 || err != nil || len(list) != 2 {
		t.Fatalf("sessions: %d %s %v", st, body, err)
	}
	st, body = get("DELETE", fmt.Sprintf("/api/sessions/%d", b.num), "sekret")
	if st != 200 || !strings.Contains(body, `"closed":1`) {
		t.Fatalf("disconnect: %d %s", st, body)
	}
	waitSession(t, tr.Relay, SessionKey{b.num, "x"}, false)
	// Not an upgrade, not a known route.
	if st, _ := get("GET", "/nope", ""); st != 404 {
		t.Fatalf("GET /nope: %d", st)
	}

	// Admin API disabled without a token.
	tr2 := startRelay(t, reg, nil, nil, nil)
	req, _ := http.NewRequest("GET", tr2.srv.URL+"/api/stats", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("admin without token: %d", resp.StatusCode)
	}

	// Shutdown closes sessions with going away and healthz says 503.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = ca.recvWithin(5 * time.Second)
	if st := websocket.CloseStatus(err); st != websocket.StatusGoingAway {
		t.Fatalf("after shutdown: %v", err)
	}
	if st, _ := get("GET", "/healthz", ""); st != 503 {
		t.Fatalf("healthz after shutdown: %d", st)
	}
}

func TestQueueFull(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	tr := startRelay(t, reg, &Options{Store: NewMemStore(&StoreOptions{MaxMessages: 2})}, ln, nil)
	ca := dial(t, tr, a, "")
	ca.send(b.num, "", "1")
	ca.send(b.num, "", "2")
	full := ca.send(b.num, "", "3")
	ca.expectError(full.Uid, "destination queue is full")
	if n := dropped(tr.Relay, dropQueueFull); n != 1 {
		t.Fatalf("queue_full = %d", n)
	}
	cb := dial(t, tr, b, "")
	cb.expectPayload("1")
	cb.expectPayload("2")
	cb.expectNothing(50 * time.Millisecond)
}
