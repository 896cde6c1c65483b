package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
)

// deadDomain is a 127.0.0.1 address nothing listens on.
func deadDomain(t *testing.T) string {
	ln, d := listen(t)
	ln.Close()
	return d
}

// Jobs waiting out a retry backoff count against the queue's bounds: a
// dead destination cannot hold more than FederationQueueSize envelopes,
// nor more than FederationQueueBytes, and the sender of the next one is
// told at once.
func TestFederationBackoffCountsAgainstBound(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	a := reg.newTwin(t, dA)
	dead := reg.newTwin(t, deadDomain(t))
	ra := startRelay(t, reg, &Options{FederationQueueSize: 3, FederationQueueBytes: 1 << 20,
		RetryBackoff: time.Second, MaxRetryBackoff: time.Second}, lnA, nil)
	ca := dial(t, ra, a, "")

	var uids []string
	for i := range 5 {
		uids = append(uids, ca.send(dead.num, "", fmt.Sprint("to the dead ", i)).Uid)
		if i < 3 {
			// Wait until the job left the ready queue: then it is being
			// posted or waiting out its backoff, and must still count.
			waitFor(t, 20*time.Second, func() error {
				if d := ra.fed.depth(); d != 0 {
					return fmt.Errorf("%d ready", d)
				}
				return nil
			})
		}
	}
	ca.expectError(uids[3], msgFedQueueFull)
	ca.expectError(uids[4], msgFedQueueFull)
	if n, _ := ra.fed.held(); n != 3 {
		t.Errorf("held %d jobs, want 3", n)
	}
	if d := dropped(ra.Relay, dropFederationFull); d != 2 {
		t.Errorf("dropped{federation_queue_full} = %d, want 2", d)
	}

	// Bytes: three envelopes of 40 KiB fill a 100 KiB queue after two.
	lnC, dC := listen(t)
	c := reg.newTwin(t, dC)
	rc := startRelay(t, reg, &Options{FederationQueueBytes: 100 << 10,
		RetryBackoff: time.Second, MaxRetryBackoff: time.Second}, lnC, nil)
	cc := dial(t, rc, c, "")
	big := strings.Repeat("x", 40<<10)
	for range 2 {
		cc.send(dead.num, "", big)
	}
	third := cc.send(dead.num, "", big)
	cc.expectError(third.Uid, msgFedQueueFull)
	if n, b := rc.fed.held(); n != 2 || b > 100<<10 {
		t.Errorf("held %d jobs, %d bytes; want 2 under 100 KiB", n, b)
	}

	// The total bounds hold across domains.
	lnD, dD := listen(t)
	d := reg.newTwin(t, dD)
	other := reg.newTwin(t, deadDomain(t))
	rd := startRelay(t, reg, &Options{FederationMaxJobs: 2,
		RetryBackoff: time.Second, MaxRetryBackoff: time.Second}, lnD, nil)
	cd := dial(t, rd, d, "")
	cd.send(dead.num, "", "one")
	cd.send(other.num, "", "two")
	cd.expectError(cd.send(other.num, "", "three").Uid, msgFedQueueFull)
}

// A destination domain without jobs is forgotten after
// FederationIdleTimeout, its workers and metric series with it.
func TestFederationIdleDomainForgotten(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	ra := startRelay(t, reg, &Options{FederationIdleTimeout: time.Second}, lnA, nil)
	rb := startRelay(t, reg, nil, lnB, nil)
	ca := dial(t, ra, a, "")
	cb := dial(t, rb, b, "")
	ca.send(b.num, "", "hello")
	cb.expectPayload("hello")
	saw := false // the series existed: its removal is not vacuous
	waitFor(t, 15*time.Second, func() error {
		n := seriesCount(t, ra.Relay, "rmb_relay_federation_requests_total")
		saw = saw || n > 0
		ra.fed.mu.Lock()
		nd, np := len(ra.fed.domains), len(ra.fed.lastPost)
		ra.fed.mu.Unlock()
		if nd+np+n != 0 {
			return fmt.Errorf("%d domains, %d with series, %d series", nd, np, n)
		}
		return nil
	})
	if !saw {
		t.Error("no federation_requests_total series seen")
	}
	// Used again, it comes back.
	ca.send(b.num, "", "again")
	cb.expectPayload("again")
}

func seriesCount(t *testing.T, r *Relay, name string) int {
	mfs, err := r.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

func TestForbiddenAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true}, {"127.8.9.1", true}, {"::1", true}, {"::ffff:127.0.0.1", true},
		{"10.1.2.3", true}, {"172.16.0.1", true}, {"192.168.1.1", true}, {"fd00::1", true},
		{"169.254.169.254", true}, {"fe80::1", true}, {"224.0.0.1", true}, {"ff02::1", true},
		{"0.0.0.0", true}, {"::", true}, {"100.64.0.1", true},
		{"8.8.8.8", false}, {"2001:4860:4860::8888", false}, {"172.32.0.1", false},
	} {
		if got := forbiddenAddr(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("forbiddenAddr(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	for _, tc := range []struct {
		domain string
		want   bool
	}{
		{"127.0.0.1:8080", true}, {"10.0.0.1", true}, {"[::1]:443", true}, {"relay.example", false},
		{"localhost:80", false}, // a name: checked when dialled
		{"8.8.8.8:443", false},
	} {
		if got := refusedLiteral(tc.domain); got != tc.want {
			t.Errorf("refusedLiteral(%s) = %v, want %v", tc.domain, got, tc.want)
		}
	}
}

// Without FederationAllowPrivate a relay never posts to a private address:
// an IP literal is refused at once, a name that resolves to one is refused
// on the address dialled. Both are counted, and the sender gets an error.
func TestFederationRefusesPrivateAddresses(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	var hits atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(target.Close)
	port := target.Listener.Addr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port()
	a := reg.newTwin(t, dA)
	literal := reg.newTwin(t, target.Listener.Addr().String())
	named := reg.newTwin(t, fmt.Sprintf("localhost:%d", port))
	// FederationScheme set: startRelay does not allow private addresses.
	ra := startRelay(t, reg, &Options{FederationScheme: "http"}, lnA, nil)
	ca := dial(t, ra, a, "")

	ca.expectError(ca.send(literal.num, "", "ssrf").Uid, msgFedAddress)
	ca.expectError(ca.send(named.num, "", "ssrf by name").Uid, msgUndeliverable)
	if d := dropped(ra.Relay, dropFedAddress); d != 2 {
		t.Errorf("dropped{federation_address} = %d, want 2", d)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the private server got %d requests", n)
	}
	if dropped(ra.Relay, dropFederation) != 0 {
		t.Error("an address refusal counted as federation_failed")
	}
}

// Federation POSTs count against the source twin's rate limit.
func TestFederationRateLimitBySource(t *testing.T) {
	reg := startRegistrar(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, "elsewhere.example")
	b := reg.newTwin(t, dB)
	honest := reg.newTwin(t, "elsewhere.example")
	rb := startRelay(t, reg, &Options{RateLimit: &RateLimit{Messages: 3, Window: time.Hour}}, lnB, nil)
	cb := dial(t, rb, b, "")
	post := func(from *twin, payload string) int {
		t.Helper()
		resp, err := http.Post("http://"+dB+"/", "application/x-protobuf",
			bytes.NewReader(marshal(t, request(t, from, "", b.num, "", payload, 60))))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var codes []int
	for i := range 6 {
		codes = append(codes, post(a, fmt.Sprint("flood ", i)))
	}
	if fmt.Sprint(codes) != "[202 202 202 429 429 429]" {
		t.Errorf("flood answered %v, want 3×202 then 429", codes)
	}
	if d := dropped(rb.Relay, dropRateLimited); d != 3 {
		t.Errorf("dropped{rate_limited} = %d, want 3", d)
	}
	if c := post(honest, "honest"); c != http.StatusAccepted {
		t.Errorf("another twin got %d", c)
	}
	for i := range 3 {
		cb.expectPayload(fmt.Sprint("flood ", i))
	}
	cb.expectPayload("honest")
}

// cutTransport fails every request once cut: a relay process that died,
// as far as the network can tell.
type cutTransport struct{ cut atomic.Bool }

func (c *cutTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.cut.Load() {
		return nil, errors.New("cut")
	}
	return http.DefaultTransport.RoundTrip(r)
}

// A relay with Redis keeps what it accepted for federation there: a relay
// abandoned without Shutdown (a crash) leaves its jobs, and a new relay
// with the same domain on the same Redis posts them once the destination
// is up.
func TestFederationJobsSurviveCrash(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	lnB, dB := listen(t)
	a := reg.newTwin(t, dA)
	b := reg.newTwin(t, dB)
	var sw downSwitch
	sw.down.Store(true)
	rb := startRelay(t, reg, nil, lnB, sw.wrap)
	cb := dial(t, rb, b, "")

	cut := &cutTransport{}
	ra := startRelay(t, reg, &Options{FederationRedis: rdb, FederationClient: &http.Client{Transport: cut},
		RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond}, lnA, nil)
	ca := dial(t, ra, a, "")
	const n = 5
	for i := range n {
		ca.send(b.num, "", fmt.Sprint("survives ", i))
	}
	key := newFedStore(rdb, dA).keys[0]
	waitFor(t, 10*time.Second, func() error {
		if l := rdb.HLen(context.Background(), key).Val(); l != n {
			return fmt.Errorf("%d jobs in redis", l)
		}
		if fedCount(ra.Relay, dB, "failure") < n {
			return errors.New("not tried yet")
		}
		return nil
	})
	// The crash: ra never reaches the network again and never shuts down
	// before the test ends.
	cut.cut.Store(true)

	lnA2, _ := listen(t)
	ra2 := startRelay(t, reg, &Options{Domains: []string{dA}, FederationRedis: rdb,
		RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond}, lnA2, nil)
	if h, _ := ra2.fed.held(); h != n {
		t.Fatalf("the new relay recovered %d jobs, want %d", h, n)
	}
	waitFor(t, 10*time.Second, func() error {
		if fedCount(ra2.Relay, dB, "failure") < 1 {
			return errors.New("not tried yet")
		}
		return nil
	})
	sw.down.Store(false)
	got := map[string]int{}
	for range n {
		got[string(cb.recv().GetPlain())]++
	}
	for i := range n {
		if p := fmt.Sprint("survives ", i); got[p] != 1 {
			t.Errorf("%q received %d times", p, got[p])
		}
	}
	cb.expectNothing(100 * time.Millisecond)
	waitFor(t, 10*time.Second, func() error {
		if l := rdb.HLen(context.Background(), key).Val(); l != 0 {
			return fmt.Errorf("%d jobs still in redis", l)
		}
		if h, _ := ra2.fed.held(); h != 0 {
			return fmt.Errorf("%d jobs held", h)
		}
		return nil
	})
	if bs := rdb.Get(context.Background(), newFedStore(rdb, dA).keys[1]).Val(); bs != "" {
		t.Errorf("byte counter left: %q", bs)
	}
}

// The federation store refuses jobs over its bounds in Redis too, and
// decodes what it stored.
func TestFedStoreBounded(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	reg := startRegistrar(t)
	a := reg.newTwin(t, "a.example")
	s := newFedStore(rdb, fmt.Sprint("bounded", time.Now().UnixNano()))
	ctx := context.Background()
	job := func(payload string) *fedJob {
		e := request(t, a, "sid", 42, "", payload, 60)
		rt := routingOf(t, marshal(t, e))
		return newFedJob(rt, Message{Data: marshal(t, e), Deadline: deadline(rt)}, []string{"x.example", "y.example:8443"})
	}
	j1 := job("one")
	if err := s.push(ctx, j1, 2, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.push(ctx, job("two"), 2, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.push(ctx, job("three"), 2, 1<<20); !errors.Is(err, errFedFull) {
		t.Fatalf("third job: %v, want errFedFull", err)
	}
	if err := s.push(ctx, job(strings.Repeat("z", 2000)), 10, 1000); !errors.Is(err, errFedFull) {
		t.Fatalf("job over the bytes bound: %v, want errFedFull", err)
	}
	rdb.HSet(ctx, s.keys[0], "garbage", "\x07nonsense")
	var loaded []*fedJob
	var bad int
	if err := s.load(ctx, 1<<20, func(j *fedJob, err error) {
		if err != nil {
			bad++
			return
		}
		loaded = append(loaded, j)
	}); err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 2 || bad != 1 {
		t.Fatalf("loaded %d jobs, %d bad; want 2 and 1", len(loaded), bad)
	}
	for _, j := range loaded {
		if j.src != (SessionKey{Twin: a.num, SID: "sid"}) || j.uid == "" || len(j.relays) != 2 ||
			j.relays[1] != "y.example:8443" || !j.msg.Deadline.After(time.Now()) {
			t.Errorf("decoded job %+v", j)
		}
	}
	if err := s.remove(j1.id); err != nil {
		t.Fatal(err)
	}
	if l := rdb.HLen(ctx, s.keys[0]).Val(); l != 1 {
		t.Errorf("%d jobs left, want 1", l)
	}
	for _, bad := range []string{"", "\x01", "\x01\x02\x05ab", "\x01\x00"} {
		if _, err := decodeFedJob(bad, 1<<20); err == nil {
			t.Errorf("decodeFedJob(%q) accepted", bad)
		}
	}
}

func routingOf(t *testing.T, b []byte) *envelope.Routing {
	var rt envelope.Routing
	if err := envelope.ReadRouting(b, &rt); err != nil {
		t.Fatal(err)
	}
	return &rt
}

// One source twin holds at most a domain's share of the federation
// queues, however many domains it sends to; another twin still gets in.
func TestFederationBoundPerSourceTwin(t *testing.T) {
	reg := startRegistrar(t)
	lnA, dA := listen(t)
	a := reg.newTwin(t, dA)
	other := reg.newTwin(t, dA)
	ra := startRelay(t, reg, &Options{FederationQueueSize: 2, FederationMaxJobs: 100,
		RetryBackoff: time.Second, MaxRetryBackoff: time.Second}, lnA, nil)
	ca := dial(t, ra, a, "")
	var dead []*twin
	for range 4 {
		dead = append(dead, reg.newTwin(t, deadDomain(t)))
	}
	ca.send(dead[0].num, "", "one")
	ca.send(dead[1].num, "", "two")
	ca.expectError(ca.send(dead[2].num, "", "three").Uid, msgFedQueueFull)
	co := dial(t, ra, other, "")
	co.send(dead[3].num, "", "other twin")
	waitFor(t, 20*time.Second, func() error {
		if n, _ := ra.fed.held(); n != 3 {
			return fmt.Errorf("%d held, want 3", n)
		}
		return nil
	})
	co.expectNothing(50 * time.Millisecond)
}
