package peer_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// stack is a registrar, relays and a redis-server, all in this process
// except redis.
type stack struct {
	t      *testing.T
	regURL string
	relays []*testRelay
	redis  *redistest.Server
	nextDB atomic.Int32
}

type testRelay struct {
	r      *relay.Relay
	srv    *httptest.Server
	lis    *trackingListener
	url    string // ws://host:port
	domain string
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("PEER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func newStack(t *testing.T, relays int) *stack {
	t.Helper()
	s := &stack{t: t}
	reg := registrar.NewServer(&registrar.Options{})
	rs := httptest.NewServer(reg.Handler())
	t.Cleanup(rs.Close)
	s.regURL = rs.URL
	for range relays {
		s.relays = append(s.relays, s.startRelay())
	}
	s.redis = redistest.Start(t, &redistest.Options{AOF: true})
	return s
}

func (s *stack) client() *registrar.Client {
	return registrar.NewClient(s.regURL, &registrar.ClientOptions{CacheTTL: 2 * time.Second, NegativeCacheTTL: 200 * time.Millisecond})
}

func (s *stack) startRelay(options ...func(*relay.Options)) *testRelay {
	return s.startRelayOn(false, options...)
}

// startRelayOn starts a relay, serving TLS (wss://, httptest's
// certificate: testRelay.srv.Client() trusts it) when tls is set.
func (s *stack) startRelayOn(tls bool, options ...func(*relay.Options)) *testRelay {
	t := s.t
	srv := httptest.NewUnstartedServer(nil)
	tl := &trackingListener{Listener: srv.Listener}
	srv.Listener = tl
	domain := tl.Addr().String()
	o := &relay.Options{
		Domains:                []string{domain},
		Directory:              s.client(),
		FederationScheme:       "http",
		FederationAllowPrivate: true, // relays on 127.0.0.1
		Logger:                 testLogger(t).With("relay", domain),
	}
	for _, f := range options {
		f(o)
	}
	r, err := relay.New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = r.Handler()
	scheme := "ws://"
	if tls {
		srv.StartTLS()
		scheme = "wss://"
	} else {
		srv.Start()
	}
	tr := &testRelay{r: r, srv: srv, lis: tl, url: scheme + domain, domain: domain}
	t.Cleanup(tr.kill)
	return tr
}

// kill stops the relay abruptly: listener and every connection closed, as
// if the process died.
func (tr *testRelay) kill() {
	tr.lis.closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr.r.Shutdown(ctx)
	tr.srv.Close()
}

// trackingListener remembers accepted connections so a test can cut them,
// hijacked WebSockets included.
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	l.conns = append(l.conns, c)
	return c, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.Listener.Close()
	for _, c := range l.conns {
		c.Close()
	}
}

func (s *stack) relayURLs(idx ...int) []string {
	if len(idx) == 0 {
		for i := range s.relays {
			idx = append(idx, i)
		}
	}
	var out []string
	for _, i := range idx {
		out = append(out, s.relays[i].url)
	}
	return out
}

func newIdentity(t testing.TB) *identity.Identity {
	t.Helper()
	seed := make([]byte, 32)
	rand.Read(seed)
	id, err := identity.FromSeed(seed, identity.KeyType("ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// testPeer is a running peer with its own Redis database.
type testPeer struct {
	*peer.Peer
	id     *identity.Identity
	rdb    *redis.Client // the peer's database, for bots
	cancel context.CancelFunc
	errc   chan error
	opts   peer.Options
}

type peerOption func(*peer.Options)

func (s *stack) newPeer(options ...peerOption) *testPeer {
	s.t.Helper()
	db := int(s.nextDB.Add(1))
	return s.startPeer(newIdentity(s.t), db, options...)
}

func (s *stack) startPeer(id *identity.Identity, db int, options ...peerOption) *testPeer {
	t := s.t
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	t.Cleanup(func() { rdb.Close() })
	botRDB := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	t.Cleanup(func() { botRDB.Close() })
	o := peer.Options{
		Identity:      id,
		Relays:        s.relayURLs(),
		Registrar:     s.client(),
		Redis:         rdb,
		Logger:        testLogger(t),
		PingInterval:  time.Second,
		PingTimeout:   time.Second,
		MinBackoff:    50 * time.Millisecond,
		MaxBackoff:    500 * time.Millisecond,
		SweepInterval: 50 * time.Millisecond,
	}
	for _, f := range options {
		f(&o)
	}
	p, err := peer.New(&o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testPeer{Peer: p, id: id, rdb: botRDB, cancel: cancel, errc: make(chan error, 1), opts: o}
	go func() { tp.errc <- p.Run(ctx) }()
	t.Cleanup(tp.stop)
	select {
	case <-p.Ready():
	case err := <-tp.errc:
		t.Fatalf("peer did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("peer not ready after 10s")
	}
	waitFor(t, 10*time.Second, func() error {
		if n := p.Connected(); n != len(o.Relays) {
			return fmt.Errorf("%d of %d relays connected", n, len(o.Relays))
		}
		return nil
	})
	return tp
}

// stop stops the peer and waits for Run to return.
func (tp *testPeer) stop() {
	tp.cancel()
	tp.Peer.Close()
}

// waitFor polls f until it returns nil or the deadline passes.
func waitFor(t testing.TB, total time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", total, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Bots: plain go-redis and JSON maps, as a client program in any language
// would do it.

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func unb64(t testing.TB, v any) string {
	t.Helper()
	s, _ := v.(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("dat %q is not base64: %v", s, err)
	}
	return string(b)
}

// pushRequest pushes an outgoing request as a client would.
func pushRequest(t testing.TB, rdb *redis.Client, msg map[string]any) {
	t.Helper()
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.LPush(context.Background(), "msgbus.system.local", b).Err(); err != nil {
		t.Fatal(err)
	}
}

func request(cmd, data string, ret string, exp int, dst ...uint32) map[string]any {
	return map[string]any{
		"ver": 1, "ref": "ref-" + ret, "cmd": cmd, "exp": exp, "dat": b64(data),
		"tag": nil, "dst": dst, "ret": ret, "shm": "application/json", "now": time.Now().Unix(),
	}
}

// popJSON pops one JSON message from queue (BRPOP) within d.
func popJSON(t testing.TB, rdb *redis.Client, queue string, d time.Duration) map[string]any {
	t.Helper()
	res, err := rdb.BRPop(context.Background(), d, queue).Result()
	if err != nil {
		t.Fatalf("nothing on %s within %v: %v", queue, d, err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(res[1]), &m); err != nil {
		t.Fatalf("bad JSON on %s: %v: %s", queue, err, res[1])
	}
	return m
}

// serve runs a service bot for cmd until the test ends: it answers with
// answer(payload) or, when that returns an error, with err {code 42}.
func serve(t testing.TB, rdb *redis.Client, cmd string, answer func(string) (string, error)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			res, err := rdb.BRPop(ctx, time.Second, "msgbus."+cmd).Result()
			if err != nil {
				continue
			}
			var in map[string]any
			if err := json.Unmarshal([]byte(res[1]), &in); err != nil {
				t.Errorf("service got bad JSON: %v", err)
				return
			}
			dat, _ := base64.StdEncoding.DecodeString(in["dat"].(string))
			out := map[string]any{"ver": 1, "ref": in["ref"], "dst": in["src"], "shm": "text/plain",
				"now": time.Now().Unix(), "err": nil, "dat": ""}
			if a, err := answer(string(dat)); err != nil {
				out["err"] = map[string]any{"code": 42, "message": err.Error()}
			} else {
				out["dat"] = b64(a)
			}
			b, _ := json.Marshal(out)
			rdb.LPush(ctx, "msgbus.system.reply", b)
		}
	}()
}

func echo(s string) (string, error) { return "echo:" + s, nil }

// rawTwin is a twin speaking the relay protocol directly, to see and forge
// what is on the wire.
type rawTwin struct {
	stats func() (relay.Stats, bool)
	t     testing.TB
	id    *identity.Identity
	twin  uint32
	conn  *websocket.Conn
}

func (s *stack) newRawTwin(withE2E bool, relayIdx int) *rawTwin {
	t := s.t
	t.Helper()
	ctx := context.Background()
	id := newIdentity(t)
	c := s.client()
	tw, err := c.Register(ctx, id, []string{s.relays[relayIdx].domain})
	if err != nil {
		t.Fatal(err)
	}
	if !withE2E {
		if _, err := c.Update(ctx, id, tw.ID, nil, []byte{}); err != nil {
			t.Fatal(err)
		}
	}
	token, err := identity.NewToken(id, tw.ID, "", time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := websocket.Dial(ctx, s.relays[relayIdx].url+"/?"+token, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return &rawTwin{t: t, id: id, twin: tw.ID, conn: conn, stats: func() (relay.Stats, bool) { return s.relays[relayIdx].r.Stats(), true }}
}

func (r *rawTwin) send(env *envelope.Envelope) {
	r.t.Helper()
	b, err := envelope.Marshal(env)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.conn.Write(context.Background(), websocket.MessageBinary, b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawTwin) recv(d time.Duration) *envelope.Envelope {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, b, err := r.conn.Read(ctx)
	if err != nil {
		if st, ok := r.stats(); ok {
			r.t.Logf("relay stats: %+v", st)
		}
		r.t.Fatalf("raw twin %d: nothing received within %v: %v", r.twin, d, err)
	}
	env, err := envelope.Unmarshal(b, 0)
	if err != nil {
		r.t.Fatal(err)
	}
	return env
}

// request builds a signed request from the raw twin to dst.
func (r *rawTwin) request(uid, cmd string, payload []byte, dst uint32) *envelope.Envelope {
	env := envelope.NewRequest(uid, cmd, payload, 60)
	env.Source = envelope.NewAddress(r.twin, "")
	env.Destination = envelope.NewAddress(dst, "")
	env.Stamp(time.Now())
	env.Sign(r.id)
	return env
}
