package hostile

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/test/harness"
)

// twinAt registers a raw identity whose relays are relays.
func (s *stack) twinAt(relays ...string) *twin {
	s.t.Helper()
	m, _ := identity.NewMnemonic()
	id, err := identity.FromSecret(m, identity.Ed25519)
	if err != nil {
		s.t.Fatal(err)
	}
	tw, err := s.reg.Client.Register(s.ctx, id, relays)
	if err != nil {
		s.t.Fatalf("register: %v", err)
	}
	return &twin{id: id, n: tw.ID}
}

// TestFederationToPrivateAddress: twins whose registered relays are
// loopback, private or link-local addresses (or a name resolving to one)
// cannot make a public relay (no --federation-allow-private) post to them;
// each request gets an error answer and the refusals are counted.
func TestFederationToPrivateAddress(t *testing.T) {
	t.Parallel()
	s := newStackWith(t, harness.RelayOptions{PublicOnly: true})
	var hits atomic.Int64
	inside := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(inside.Close)
	_, port, _ := net.SplitHostPort(inside.Listener.Addr().String())
	attacker := s.dial(s.newTwin())
	targets := []string{
		inside.Listener.Addr().String(), // 127.0.0.1:port
		"10.20.30.40:80",
		"169.254.169.254:80", // cloud metadata
		"[::1]:" + port,
		"localhost:" + port, // a name: refused on the address dialled
	}
	for _, target := range targets {
		victim := s.twinAt(target)
		e := request(attacker.tw, victim.n, "ssrf", []byte("GET /latest/meta-data"), 30)
		attacker.send(e)
		attacker.expectError(e.Uid, 0, envelope.CodeUndeliverable, 20*time.Second)
	}
	if got := s.relayDropped("federation_address"); got != float64(len(targets)) {
		t.Errorf("dropped_total{federation_address} = %v, want %d", got, len(targets))
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the private server got %d requests", n)
	}
	s.echoWorks(attacker)
	s.echoWorks(s.dial(s.newTwin()))
}

// TestFederationPostFlood: one twin POSTs envelopes straight to a relay's
// federation endpoint as fast as it can; the relay's per-twin rate limit
// (--limit) stops it with 429 while another twin's POSTs and the peers'
// traffic go through.
func TestFederationPostFlood(t *testing.T) {
	t.Parallel()
	const limit, flood = 50, 300
	s := newStack(t, "--limit", fmt.Sprint(limit), "--limit-window", "10m")
	attacker := s.twinAt("elsewhere.invalid")
	codes := map[int]int{}
	for i := range flood {
		e := request(attacker, s.b.Twin, "flood.unserved", []byte(fmt.Sprint("flood ", i)), 10)
		code, _ := s.post(marshal(t, e))
		codes[code]++
	}
	// The bucket refills at limit per 10 minutes: a few more may pass on a
	// slow machine.
	if codes[http.StatusAccepted] < limit || codes[http.StatusAccepted] > limit+5 ||
		codes[http.StatusTooManyRequests] != flood-codes[http.StatusAccepted] {
		t.Errorf("flood answered %v, want about %d×202 and the rest 429", codes, limit)
	}
	if got := s.relayDropped("rate_limited"); got != float64(codes[http.StatusTooManyRequests]) {
		t.Errorf("dropped_total{rate_limited} = %v, want %d", got, codes[http.StatusTooManyRequests])
	}
	honest := s.twinAt("elsewhere.invalid")
	if code, msg := s.post(marshal(t, request(honest, s.b.Twin, "flood.unserved", []byte("honest"), 10))); code != http.StatusAccepted {
		t.Errorf("another twin's POST: %d %s", code, msg)
	}
	s.echoWorks(s.dial(s.newTwin()))
}

// TestFederationDeadDomainBounded: a twin sends large requests to a twin
// whose relay never answers. Jobs waiting out their retry backoff count
// against the destination's queue: the relay holds at most
// --federation-queue-bytes for it, refuses the rest at once with an error
// answer, and keeps refusing while the held jobs retry.
func TestFederationDeadDomainBounded(t *testing.T) {
	t.Parallel()
	const bound = 1 << 20
	s := newStack(t, "--federation-queue-bytes", fmt.Sprint(bound))
	dead, err := harness.FreeAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	victim := s.twinAt(dead)
	attacker := s.dial(s.newTwin())
	payload := bytes.Repeat([]byte("b"), 60<<10)
	send := func(n int) {
		for range n {
			attacker.send(request(attacker.tw, victim.n, "bloat", payload, 600))
		}
	}
	check := func(sent int) (held float64) {
		t.Helper()
		s.waitFor(30*time.Second, func() error {
			held = s.relayMetric("rmb_relay_federation_held_jobs", nil)
			if full := s.relayDropped("federation_queue_full"); held+full != float64(sent) {
				return fmt.Errorf("%v held + %v refused of %d", held, full, sent)
			}
			return nil
		})
		if b := s.relayMetric("rmb_relay_federation_held_bytes", nil); b > bound || b == 0 {
			t.Errorf("federation holds %v bytes, bound %d", b, bound)
		}
		return held
	}
	send(100) // 6 MiB
	held := check(100)
	if held < 10 || held > 17 {
		t.Errorf("%v jobs held, want the ~16 that fit in 1 MiB", held)
	}
	// The refused requests are answered at once.
	for range 100 - int(held) {
		e, err := attacker.recv(20 * time.Second)
		if err != nil {
			t.Fatalf("error answer: %v", err)
		}
		if !e.IsError() || e.GetError().GetMessage() != "federation queue is full" {
			t.Fatalf("answer %v, want the federation queue full error", e)
		}
	}
	// The held jobs retry (and fail) while they wait: still counted.
	s.waitFor(30*time.Second, func() error {
		if f := s.relayMetric("rmb_relay_federation_requests_total", map[string]string{"result": "failure"}); f < 2*held {
			return fmt.Errorf("%v failed POSTs", f)
		}
		return nil
	})
	send(20)
	if h := check(120); h != held {
		t.Errorf("%v jobs held after the retries, want %v", h, held)
	}
	s.echoWorks(attacker)
}
