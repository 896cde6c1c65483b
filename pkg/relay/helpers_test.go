package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// testRegistrar is a real registrar server with a client for the relays.
type testRegistrar struct {
	srv    *httptest.Server
	client *registrar.Client
}

func startRegistrar(t testing.TB) *testRegistrar {
	t.Helper()
	srv := httptest.NewServer(registrar.NewServer(nil).Handler())
	t.Cleanup(srv.Close)
	return &testRegistrar{srv: srv, client: registrar.NewClient(srv.URL, &registrar.ClientOptions{
		NegativeCacheTTL: time.Millisecond, CacheTTL: time.Second,
	})}
}

// twin is a registered identity.
type twin struct {
	id  *identity.Identity
	num uint32
}

func (g *testRegistrar) newTwin(t testing.TB, relays ...string) *twin {
	t.Helper()
	seed := make([]byte, identity.SeedSize)
	rand.Read(seed)
	id, err := identity.FromSeed(seed, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	return &twin{id: id, num: g.newTwinWith(t, id, relays...)}
}

// newTwinWith registers id and returns its twin id.
func (g *testRegistrar) newTwinWith(t testing.TB, id *identity.Identity, relays ...string) uint32 {
	t.Helper()
	tw, err := registrar.NewClient(g.srv.URL, nil).Register(context.Background(), id, relays)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return tw.ID
}

// testRelay is a relay served on 127.0.0.1.
type testRelay struct {
	*Relay
	srv    *httptest.Server
	domain string // host:port
	ln     net.Listener
}

// clock is a settable clock: real time plus an offset.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// listen reserves 127.0.0.1:0 and returns the listener and its host:port.
func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln, ln.Addr().String()
}

// startRelay starts a relay on ln (nil: a new listener) with opts filled in
// with test defaults. wrap, if set, wraps the handler.
func startRelay(t testing.TB, reg *testRegistrar, opts *Options, ln net.Listener, wrap func(http.Handler) http.Handler) *testRelay {
	t.Helper()
	if ln == nil {
		ln, _ = listen(t)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	domain := ln.Addr().String()
	if len(o.Domains) == 0 {
		o.Domains = []string{domain}
	}
	if o.Directory == nil {
		o.Directory = reg.client
	}
	if o.Logger == nil {
		o.Logger = testLogger(t).With("relay", domain)
	}
	if o.FederationScheme == "" {
		o.FederationScheme = "http"
		o.FederationAllowPrivate = true // relays on 127.0.0.1
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = 50 * time.Millisecond
	}
	if o.MaxRetryBackoff == 0 {
		o.MaxRetryBackoff = 200 * time.Millisecond
	}
	r, err := New(&o)
	if err != nil {
		t.Fatal(err)
	}
	h := r.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	tr := &testRelay{Relay: r, srv: srv, domain: domain, ln: ln}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
		srv.Close()
	})
	return tr
}

func (tr *testRelay) wsURL() string { return "ws://" + tr.domain + "/" }

// client is a test WebSocket client of one session. Unless made with
// dialSilent, a goroutine reads all the time (so WebSocket pings are
// answered) into in: coder/websocket closes a connection whose Read is
// cancelled, so tests never read with a timeout themselves.
type client struct {
	t   testing.TB
	c   *websocket.Conn
	tw  *twin
	sid string
	in  chan received
}

type received struct {
	b   []byte
	err error
}

func token(t testing.TB, tw *twin, sid string) string {
	t.Helper()
	tok, err := identity.NewToken(tw.id, tw.num, sid, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dial connects tw's session sid to the relay.
func dial(t testing.TB, tr *testRelay, tw *twin, sid string) *client {
	t.Helper()
	c := dialSilent(t, tr, tw, sid)
	c.in = make(chan received, 1024)
	go func() {
		for {
			_, b, err := c.c.Read(context.Background())
			c.in <- received{b, err}
			if err != nil {
				return
			}
		}
	}()
	return c
}

// dialSilent connects a client that never reads.
func dialSilent(t testing.TB, tr *testRelay, tw *twin, sid string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, tr.wsURL()+"?"+token(t, tw, sid), nil)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = fmt.Sprintf(" (%d %s)", resp.StatusCode, b)
		}
		t.Fatalf("dial twin %d sid %q: %v%s", tw.num, sid, err, body)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	return &client{t: t, c: c, tw: tw, sid: sid}
}

// request builds a signed request from tw:sid to dst.
func request(t testing.TB, from *twin, sid string, dst uint32, dsid string, payload string, ttl uint64) *envelope.Envelope {
	t.Helper()
	e := envelope.NewRequest(newUID(), "test.echo", []byte(payload), ttl)
	e.Source = envelope.NewAddress(from.num, sid)
	e.Destination = envelope.NewAddress(dst, dsid)
	e.Stamp(time.Now())
	e.Sign(from.id)
	return e
}

var uidSeq atomic.Uint64

func newUID() string { return fmt.Sprintf("uid-%d", uidSeq.Add(1)) }

func marshal(t testing.TB, e *envelope.Envelope) []byte {
	t.Helper()
	b, err := envelope.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.c.Write(ctx, websocket.MessageBinary, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// send sends a request to dst and returns it.
func (c *client) send(dst uint32, dsid, payload string) *envelope.Envelope {
	c.t.Helper()
	e := request(c.t, c.tw, c.sid, dst, dsid, payload, 60)
	c.sendRaw(marshal(c.t, e))
	return e
}

// recvWithin reads one envelope within d.
func (c *client) recvWithin(d time.Duration) (*envelope.Envelope, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-c.in:
		if r.err != nil {
			c.in <- r // stays closed
			return nil, r.err
		}
		return envelope.Unmarshal(r.b, 0)
	case <-t.C:
		return nil, errors.New("timeout")
	}
}

func (c *client) recv() *envelope.Envelope {
	c.t.Helper()
	e, err := c.recvWithin(5 * time.Second)
	if err != nil {
		c.t.Fatalf("twin %d sid %q: recv: %v", c.tw.num, c.sid, err)
	}
	return e
}

// expectError reads one envelope and checks it is a relay error with msg
// answering uid.
func (c *client) expectError(uid, msg string) {
	c.t.Helper()
	e := c.recv()
	if !e.IsError() {
		c.t.Fatalf("want error %q, got %v", msg, e)
	}
	if e.Uid != uid || e.GetError().GetMessage() != msg || e.GetSource().GetTwin() != 0 ||
		e.GetDestination().GetTwin() != c.tw.num || e.GetDestination().GetConnection() != c.sid || len(e.Signature) != 0 {
		c.t.Fatalf("want unsigned relay error %q for uid %s to %d:%s, got %v", msg, uid, c.tw.num, c.sid, e)
	}
}

// expectPayload reads one envelope and checks its plain payload.
func (c *client) expectPayload(want string) *envelope.Envelope {
	c.t.Helper()
	e := c.recv()
	if got := string(e.GetPlain()); got != want {
		c.t.Fatalf("twin %d: got payload %q (%v), want %q", c.tw.num, got, e, want)
	}
	return e
}

// expectNothing checks that nothing arrives within d.
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	if e, err := c.recvWithin(d); err == nil {
		c.t.Fatalf("want nothing, got %v", e)
	}
}

// waitFor polls cond every 10 ms until it returns nil or d passes.
func waitFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %v", d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSession waits until k is (or is not) connected.
func waitSession(t testing.TB, r *Relay, k SessionKey, live bool) {
	t.Helper()
	waitFor(t, 20*time.Second, func() error {
		if (r.lookup(k) != nil) != live {
			return fmt.Errorf("session %s live=%v", k, !live)
		}
		return nil
	})
}

func dropped(r *Relay, reason dropReason) uint64 { return r.counters.drops[reason].Load() }
