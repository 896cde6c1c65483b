package relay

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// downSwitch makes a relay's federation endpoint answer 503 while down.
type downSwitch struct{ down atomic.Bool }

func (d *downSwitch) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && d.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func fedCount(r *Relay, domain, result string) float64 {
	var m dto.Metric
	r.metrics.fedResults.WithLabelValues(domain, result).Write(&m)
	return m.GetCounter().GetValue()
}

func TestFederation(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	deadLn, dDead := listen(t)
	deadLn.Close() // nothing listens there: connection refused
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	c := reg.newTwin(t, dDead)
	e := reg.newTwin(t, dDead, dB)
	var sw downSwitch
	ra := startRelay(t, reg, nil, lnA, nil)
	rb := startRelay(t, reg, nil, lnB, sw.wrap)
	ca := dial(t, ra, a, "")
	cb := dial(t, rb, b, "")

	// Both up: a on A reaches b on B, and b answers back through A.
	ca.send(b.num, "", "over there")
	got := cb.expectPayload("over there")
	if err := got.Verify(a.id.PublicKey()); err != nil {
		t.Fatal(err)
	}
	cb.send(a.num, "", "and back")
	ca.expectPayload("and back")

	// B down, then up before the TTL: delivered.
	sw.down.Store(true)
	ca.send(b.num, "", "after the outage")
	waitFor(t, 20*time.Second, func() error {
		if n := fedCount(ra.Relay, dB, "failure"); n < 2 {
			return fmt.Errorf("%v failures so far", n)
		}
		return nil
	})
	cb.expectNothing(10 * time.Millisecond)
	sw.down.Store(false)
	cb.expectPayload("after the outage")

	// A twin whose only relay never comes up: the request gets an error
	// back once its TTL runs out.
	req := request(t, a, "", c.num, "", "lost", 2)
	ca.sendRaw(marshal(t, req))
	ca.expectError(req.Uid, "failed to deliver message to destination relay")
	if dropped(ra.Relay, dropFederation) != 1 {
		t.Fatal("federation give-up not counted")
	}

	// A twin with a dead relay first and B second: delivered through B, and
	// the dead relay is ranked last afterwards.
	ce := dial(t, rb, e, "")
	ca.send(e.num, "", "via the second relay")
	ce.expectPayload("via the second relay")
	if r := ra.fed.ranker.rank([]string{dDead, dB}); r[0] != dB {
		t.Fatalf("ranking %v, want %s first", r, dB)
	}
	// Relay-to-relay delivery to an offline twin of B is stored there.
	cb.c.CloseNow()
	waitSession(t, rb.Relay, SessionKey{b.num, ""}, false)
	ca.send(b.num, "", "stored on B")
	cb = dial(t, rb, b, "")
	cb.expectPayload("stored on B")
}

func TestFederationReceiver(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	other := reg.newTwin(t, dA)
	rb := startRelay(t, reg, &Options{MaxEnvelopeSize: 4096}, lnB, nil)
	lnA.Close() // only its address is used
	cb := dial(t, rb, b, "")

	post := func(body []byte) int {
		t.Helper()
		resp, err := http.Post("http://"+dB+"/", "application/x-protobuf", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := request(t, a, "", b.num, "", "federated", 60)
	forged := request(t, a, "", b.num, "", "forged", 60)
	forged.Sign(other.id)
	unsigned := request(t, a, "", b.num, "", "unsigned", 60)
	unsigned.Signature = nil
	tampered := request(t, a, "", b.num, "", "tampered", 60)
	tampered.Payload = &envelope.Envelope_Plain{Plain: []byte("changed")}
	unknownSrc := request(t, a, "", b.num, "", "x", 60)
	unknownSrc.Source.Twin = 777777
	notOurs := request(t, b, "", a.num, "", "x", 60)
	unknownDst := request(t, a, "", 888888, "", "x", 60)
	for _, tc := range []struct {
		name string
		body []byte
		want int
	}{
		{"malformed", []byte{0x0a, 0xff}, 400},
		{"too large", bytes.Repeat([]byte{0}, 5000), 413},
		{"forged", marshal(t, forged), 401},
		{"unsigned", marshal(t, unsigned), 401},
		{"tampered", marshal(t, tampered), 401},
		{"unknown source twin", marshal(t, unknownSrc), 401},
		{"not ours", marshal(t, notOurs), 404},
		{"unknown destination", marshal(t, unknownDst), 404},
		{"good", marshal(t, good), 202},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(tc.body); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
	cb.expectPayload("federated")
	cb.expectNothing(50 * time.Millisecond)
	if n := rb.counters.fedMsgsIn.Load(); n != 8 {
		t.Errorf("federated in = %d, want 8", n)
	}
	if resp, err := http.Get("http://" + dB + "/metrics"); err == nil {
		var sb strings.Builder
		resp.Write(&sb)
		if !strings.Contains(sb.String(), `rmb_relay_messages_in_total{via="federation"} 8`) {
			t.Error("federation metrics missing")
		}
	}
}

// slowPosts delays each federation POST a relay receives.
func slowPosts(d time.Duration) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				time.Sleep(d)
			}
			h.ServeHTTP(w, r)
		})
	}
}

// TestShutdownPostsFederationQueue stops a relay while its federation
// queue holds envelopes for a slow peer relay: they are posted before the
// relay stops, not dropped (their callers would wait out their TTL).
func TestShutdownPostsFederationQueue(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	ra := startRelay(t, reg, &Options{FederationWorkers: 1}, lnA, nil)
	rb := startRelay(t, reg, nil, lnB, slowPosts(50*time.Millisecond))
	ca := dial(t, ra, a, "")
	cb := dial(t, rb, b, "")
	const n = 10
	for i := range n {
		ca.send(b.num, "", fmt.Sprint("queued ", i))
	}
	waitFor(t, 20*time.Second, func() error {
		if d := ra.fed.depth(); d < n/2 {
			return fmt.Errorf("federation queue holds %d", d)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ra.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		cb.expectPayload(fmt.Sprint("queued ", i))
	}
	if d := dropped(ra.Relay, dropShutdown); d != 0 {
		t.Fatalf("%d envelopes dropped at shutdown", d)
	}
}
