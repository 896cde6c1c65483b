package hostile

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// TestForgedSignature: the relay does not check signatures on WebSocket
// traffic (the session is authenticated), the destination peer does: a
// request signed with the wrong key, or altered after signing, is
// answered with a signed error 104 and never reaches the service. Over
// federation the relay itself refuses it with 401.
func TestForgedSignature(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x, y := s.newTwin(), s.newTwin()
	c := s.dial(x)

	wrongKey := request(x, s.b.Twin, "echo", []byte("forged-wrong-key"), 30)
	wrongKey.Sign(y.id) // x's envelope, y's signature
	c.send(wrongKey)
	c.expectError(wrongKey.Uid, s.b.Twin, envelope.CodeBadSignature, 10*time.Second)

	altered := request(x, s.b.Twin, "echo", []byte("forged-altered"), 30)
	altered.Payload = &envelope.Envelope_Plain{Plain: []byte("forged-ALTERED")}
	c.send(altered)
	c.expectError(altered.Uid, s.b.Twin, envelope.CodeBadSignature, 10*time.Second)

	unsigned := request(x, s.b.Twin, "echo", []byte("forged-unsigned"), 30)
	unsigned.Signature = nil
	c.send(unsigned)
	c.expectError(unsigned.Uid, s.b.Twin, envelope.CodeBadSignature, 10*time.Second)

	for _, id := range []string{"forged-wrong-key", "forged-altered", "forged-ALTERED", "forged-unsigned"} {
		if n := s.echo.Seen(id); n != 0 {
			t.Errorf("service saw %q %d times", id, n)
		}
	}
	// Federation: the relay verifies before accepting.
	fed := request(x, s.b.Twin, "echo", []byte("forged-federated"), 30)
	fed.Sign(y.id)
	if code, msg := s.post(marshal(t, fed)); code != http.StatusUnauthorized {
		t.Errorf("forged federation POST: %d %s, want 401", code, msg)
	}
	s.echoWorks(c)
}

// TestWrongSource: a session may only send as itself. An envelope whose
// source is another twin is refused by the relay with "message wrong
// source", even when it carries that twin's valid signature (a captured
// envelope). Over federation an envelope claiming another source but
// signed by the sender is refused with 401.
func TestWrongSource(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x, y := s.newTwin(), s.newTwin()
	c := s.dial(x)

	asY := request(x, s.b.Twin, "echo", []byte("as-y"), 30)
	asY.Source = envelope.NewAddress(y.n, "")
	asY.Sign(x.id)
	c.send(asY)
	e := c.expectError(asY.Uid, 0, 0, 10*time.Second)
	if !strings.Contains(e.GetError().GetMessage(), "wrong source") {
		t.Errorf("error %q, want message wrong source", e.GetError().GetMessage())
	}
	captured := request(y, s.b.Twin, "echo", []byte("captured-from-y"), 30) // signed by y
	c.send(captured)
	c.expectError(captured.Uid, 0, 0, 10*time.Second)
	if n := s.echo.Seen("as-y") + s.echo.Seen("captured-from-y"); n != 0 {
		t.Errorf("service saw spoofed requests %d times", n)
	}
	if got := s.relayDropped("wrong_source"); got < 2 {
		t.Errorf("dropped_total{wrong_source} = %v, want >= 2", got)
	}
	fed := request(x, s.b.Twin, "echo", []byte("fed-as-y"), 30)
	fed.Source = envelope.NewAddress(y.n, "")
	fed.Sign(x.id)
	if code, msg := s.post(marshal(t, fed)); code != http.StatusUnauthorized {
		t.Errorf("federation POST as another twin: %d %s, want 401", code, msg)
	}
	s.echoWorks(c)
}

// TestTokens: a token naming one twin but signed by another's key is
// refused (401), as are expired, future-issued and too long-lived tokens
// and a token with a bad algorithm; missing or garbage tokens get 400.
func TestTokens(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x, y := s.newTwin(), s.newTwin()
	now := time.Now()
	cases := []struct {
		name string
		tok  string
		want int
	}{
		{"sub is y, signed by x", token(t, x.id, y.n, "", now, time.Minute), http.StatusUnauthorized},
		{"unknown twin", token(t, x.id, 4_000_000_000, "", now, time.Minute), http.StatusUnauthorized},
		{"expired an hour ago", token(t, x.id, x.n, "", now.Add(-2*time.Hour), time.Hour), http.StatusUnauthorized},
		{"issued a day ahead", token(t, x.id, x.n, "", now.Add(24*time.Hour), time.Minute), http.StatusUnauthorized},
		{"valid for ten years", token(t, x.id, x.n, "", now, 10*365*24*time.Hour), http.StatusUnauthorized},
		{"alg none", "eyJhbGciOiJub25lIn0." + strings.Split(token(t, x.id, x.n, "", now, time.Minute), ".")[1] + ".", http.StatusBadRequest},
		{"garbage", "not-a-token", http.StatusBadRequest},
		{"missing", "", http.StatusBadRequest},
		{"huge", strings.Repeat("A", 64<<10), http.StatusBadRequest},
	}
	for _, tc := range cases {
		c, status, _ := s.dialToken(tc.tok)
		if c != nil {
			c.CloseNow()
		}
		if status != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, status, tc.want)
		}
	}
	// The honest token of the same twin still works.
	s.echoWorks(s.dial(x))
}

// TestEnvelopeTimes: an expired envelope is dropped by the relay (counted,
// not delivered); one whose deadline lies beyond MaxTTL is refused by the
// relay, on the WebSocket path with an error envelope and on federation
// with 400 (the destination peer refuses them too: it would otherwise pin
// an entry of its duplicate filter for as long as it claims).
func TestEnvelopeTimes(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	c := s.dial(x)

	before := s.relayDropped("expired")
	old := envelope.NewRequest(newUID(), "echo", []byte("expired-envelope"), 60)
	old.Source, old.Destination = envelope.NewAddress(x.n, ""), envelope.NewAddress(s.b.Twin, "")
	old.Timestamp = uint64(time.Now().Add(-time.Hour).Unix())
	old.Sign(x.id)
	c.send(old)
	s.waitFor(5*time.Second, func() error {
		if s.relayDropped("expired") <= before {
			return errorf("expired envelope not counted as dropped")
		}
		return nil
	})

	future := envelope.NewRequest(newUID(), "echo", []byte("future-envelope"), 60)
	future.Source, future.Destination = envelope.NewAddress(x.n, ""), envelope.NewAddress(s.b.Twin, "")
	future.Timestamp = uint64(time.Now().Add(365 * 24 * time.Hour).Unix())
	future.Sign(x.id)
	c.send(future)
	e := c.expectAnswer(future.Uid, 10*time.Second)
	if !e.IsError() {
		t.Errorf("far-future request answered %v, want an error", e)
	}
	huge := envelope.NewRequest(newUID(), "echo", []byte("huge-ttl-envelope"), 0)
	huge.Source, huge.Destination = envelope.NewAddress(x.n, ""), envelope.NewAddress(s.b.Twin, "")
	huge.Timestamp, huge.Expiration = uint64(time.Now().Unix()), 1<<40
	huge.Sign(x.id)
	c.send(huge)
	if e := c.expectAnswer(huge.Uid, 10*time.Second); !e.IsError() {
		t.Errorf("request with a 2^40 s TTL answered %v, want an error", e)
	}
	time.Sleep(500 * time.Millisecond)
	for _, id := range []string{"expired-envelope", "future-envelope", "huge-ttl-envelope"} {
		if n := s.echo.Seen(id); n != 0 {
			t.Errorf("service saw %q", id)
		}
	}
	fed := envelope.NewRequest(newUID(), "echo", []byte("future-federated"), 60)
	fed.Source, fed.Destination = envelope.NewAddress(x.n, ""), envelope.NewAddress(s.b.Twin, "")
	fed.Timestamp = uint64(time.Now().Add(365 * 24 * time.Hour).Unix())
	fed.Sign(x.id)
	if code, msg := s.post(marshal(t, fed)); code != http.StatusBadRequest {
		t.Errorf("far-future federation POST: %d %s, want 400", code, msg)
	}
	// The relay refuses them on both paths (the two WebSocket ones with
	// an error envelope), before the peer would.
	if got := s.relayDropped("future"); got != 3 {
		t.Errorf("dropped_total{future} = %v, want 3", got)
	}
	s.echoWorks(c)
}

// TestFederationReplay: a federation POST accepted once is answered 202
// again when replayed but delivered only once, and counted as dropped
// reason "replay". The same uid to another destination (a multi-
// destination request) is not a replay.
func TestFederationReplay(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	e := request(x, s.b.Twin, "echo", []byte("replayed-once"), 60)
	body := marshal(t, e)
	// The first POST is delivered; the next four are delivered again (a
	// peer re-sending a request whose answer was lost looks the same), and
	// peer B answers them from its cache; the last two are replays.
	const posts, redelivered = 7, 4
	for i := range posts {
		if code, msg := s.post(body); code != http.StatusAccepted {
			t.Fatalf("POST %d: %d %s, want 202", i, code, msg)
		}
	}
	// The same uid to peer A: another envelope, delivered (A has no echo
	// service: it answers 404 after queueing, which is not our concern).
	other := envelope.NewRequest(e.Uid, "rmb.version", nil, 60)
	other.Source, other.Destination = envelope.NewAddress(x.n, ""), envelope.NewAddress(s.a.Twin, "")
	other.Stamp(time.Now())
	other.Sign(x.id)
	if code, msg := s.post(marshal(t, other)); code != http.StatusAccepted {
		t.Fatalf("same uid, other destination: %d %s", code, msg)
	}
	s.waitFor(10*time.Second, func() error {
		if s.echo.Seen("replayed-once") == 0 {
			return errorf("the original was not delivered")
		}
		return nil
	})
	time.Sleep(time.Second)
	if n := s.echo.Seen("replayed-once"); n != 1 {
		t.Errorf("service saw the replayed envelope %d times, want 1", n)
	}
	if got := s.relayDropped("replay"); got != posts-1-redelivered {
		t.Errorf("dropped_total{replay} = %v, want %d", got, posts-1-redelivered)
	}
	// Peer B suppressed the copies the relay delivered again.
	s.waitFor(10*time.Second, func() error {
		if d := s.peerMetric(s.b, "rmb_peer_duplicates_total", nil); d != redelivered {
			return fmt.Errorf("peer B suppressed %v duplicates, want %d", d, redelivered)
		}
		return nil
	})
	if got := s.peerMetric(s.a, "rmb_peer_requests_received_total", nil); got != 1 {
		t.Errorf("peer A received %v requests, want 1 (same uid, other destination)", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func errorf(s string) error { return errString(s) }

// TestTokenNotLogged: the JWT is the whole query string of the relay URL
// and stays valid for its lifetime, so neither side may write it to a
// log. The peer logs every failed dial; the relay logs refused tokens.
func TestTokenNotLogged(t *testing.T) {
	t.Parallel()
	s := newStack(t, "--debug")
	x := s.newTwin()
	// Refused tokens on the relay (logged at debug level).
	for _, tok := range []string{token(t, x.id, x.n, "", time.Now().Add(-2*time.Hour), time.Hour), "eyJhbGciOiJub25lIn0.eyJzdWIiOjF9.c2ln"} {
		if c, _, _ := s.dialToken(tok); c != nil {
			c.CloseNow()
		}
	}
	// Failed dials on the peer: the relay is gone.
	s.relay.Kill()
	s.waitFor(10*time.Second, func() error {
		if !strings.Contains(s.a.Tail(50), "relay connection failed") {
			return errorf("peer A has not logged a failed dial yet")
		}
		return nil
	})
	for _, p := range []interface{ Tail(int) string }{s.a, s.b, s.relay} {
		if log := p.Tail(1000); strings.Contains(log, "?eyJ") || strings.Contains(log, "eyJhbGci") {
			i := strings.Index(log, "eyJ")
			t.Errorf("a token was logged: ...%s...", log[max(0, i-80):min(len(log), i+40)])
		}
	}
}
