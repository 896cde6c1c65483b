package hostile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/test/harness"
)

// stack is a registrar, one relay, a redis-server and two peers: A (a
// client's peer, Redis DB 1) and B (a service's peer, DB 2) with an echo
// service on command "echo".
type stack struct {
	t     *testing.T
	ctx   context.Context
	c     *harness.Cluster
	reg   *harness.Registrar
	relay *harness.Relay
	a, b  *harness.Peer
	rdbA  *redis.Client
	rdbB  *redis.Client
	echo  *harness.Echo
}

func newStack(t *testing.T, relayFlags ...string) *stack {
	t.Helper()
	return newStackWith(t, harness.RelayOptions{Extra: relayFlags})
}

// newStackWith is newStack with the relay's options and extra flags for
// peer B.
func newStackWith(t *testing.T, ro harness.RelayOptions, peerBFlags ...string) *stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	c := harness.NewCluster(t.TempDir(), bins)
	t.Cleanup(c.Close)
	s := &stack{t: t, ctx: ctx, c: c}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("start: %v\n%s", err, c.Logs(30))
		}
	}
	var err error
	s.reg, err = c.StartRegistrar(ctx)
	must(err)
	s.relay, err = c.StartRelay(ctx, s.reg, ro)
	must(err)
	rs, err := c.Redis(false)
	must(err)
	s.a, err = c.StartPeer(ctx, "peerA", s.reg, rs.URL()+"/1", s.relay)
	must(err)
	s.b, err = c.StartPeerArgs(ctx, "peerB", s.reg, rs.URL()+"/2", peerBFlags, s.relay)
	must(err)
	s.rdbA = redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 1})
	s.rdbB = redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 2})
	t.Cleanup(func() { s.rdbA.Close(); s.rdbB.Close() })
	s.echo = harness.NewEcho(s.rdbB, "echo")
	ectx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go s.echo.Run(ectx)
	return s
}

// twin is a raw client identity registered at the registrar, homed on the
// stack's relay.
type twin struct {
	id *identity.Identity
	n  uint32
}

func (s *stack) newTwin() *twin {
	s.t.Helper()
	m, _ := identity.NewMnemonic()
	id, err := identity.FromSecret(m, identity.Ed25519)
	if err != nil {
		s.t.Fatal(err)
	}
	tw, err := s.reg.Client.Register(s.ctx, id, []string{s.relay.Addr})
	if err != nil {
		s.t.Fatalf("register: %v", err)
	}
	return &twin{id: id, n: tw.ID}
}

// token signs a relay token for twin n with id's key.
func token(t testing.TB, id *identity.Identity, n uint32, sid string, iat time.Time, life time.Duration) string {
	t.Helper()
	tok, err := identity.NewToken(id, n, sid, iat, life)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dialToken opens a WebSocket with the given query string; it returns the
// HTTP status of a refusal.
func (s *stack) dialToken(tok string) (*websocket.Conn, int, error) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.relay.URL()+"/?"+tok, nil)
	if err != nil {
		if resp != nil {
			return nil, resp.StatusCode, err
		}
		return nil, 0, err
	}
	c.SetReadLimit(4 << 20)
	return c, http.StatusSwitchingProtocols, nil
}

// client is a raw WebSocket session of a twin.
type client struct {
	t    *testing.T
	tw   *twin
	conn *websocket.Conn
}

func (s *stack) dial(tw *twin) *client {
	s.t.Helper()
	c, status, err := s.dialToken(token(s.t, tw.id, tw.n, "", time.Now(), time.Minute))
	if err != nil {
		s.t.Fatalf("dial: status %d: %v", status, err)
	}
	s.t.Cleanup(func() { c.CloseNow() })
	return &client{t: s.t, tw: tw, conn: c}
}

var uidSeq atomic.Int64

func newUID() string { return fmt.Sprintf("hostile-%d-%d", time.Now().UnixNano(), uidSeq.Add(1)) }

// request is a signed request from tw to dst with a plain payload.
func request(tw *twin, dst uint32, cmd string, payload []byte, ttl uint64) *envelope.Envelope {
	e := envelope.NewRequest(newUID(), cmd, payload, ttl)
	e.Source = envelope.NewAddress(tw.n, "")
	e.Destination = envelope.NewAddress(dst, "")
	e.Stamp(time.Now())
	e.Sign(tw.id)
	return e
}

func marshal(t testing.TB, e *envelope.Envelope) []byte {
	t.Helper()
	b, err := envelope.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (c *client) sendRaw(b []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageBinary, b)
}

func (c *client) send(e *envelope.Envelope) {
	c.t.Helper()
	if err := c.sendRaw(marshal(c.t, e)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv reads the next envelope within d.
func (c *client) recv(d time.Duration) (*envelope.Envelope, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		typ, b, err := c.conn.Read(ctx)
		if err != nil {
			return nil, err
		}
		if typ != websocket.MessageBinary {
			continue
		}
		return envelope.Unmarshal(b, 0)
	}
}

// expectAnswer waits for the answer to uid, skipping others.
func (c *client) expectAnswer(uid string, d time.Duration) *envelope.Envelope {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		e, err := c.recv(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("no answer to %s: %v", uid, err)
		}
		if e.Uid == uid {
			return e
		}
	}
}

// expectError waits for the answer to uid and checks it is an error with
// code (0: any) from src (0: the relay).
func (c *client) expectError(uid string, src, code uint32, d time.Duration) *envelope.Envelope {
	c.t.Helper()
	e := c.expectAnswer(uid, d)
	if !e.IsError() {
		c.t.Fatalf("answer to %s is not an error: %v", uid, e)
	}
	if e.GetSource().GetTwin() != src || (code != 0 && e.GetError().GetCode() != code) {
		c.t.Fatalf("answer to %s: error %d %q from twin %d, want code %d from twin %d",
			uid, e.GetError().GetCode(), e.GetError().GetMessage(), e.GetSource().GetTwin(), code, src)
	}
	return e
}

// expectNothing checks no envelope arrives within d.
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	e, err := c.recv(d)
	if err == nil {
		c.t.Fatalf("unexpected envelope: %v", e)
	}
}

// echoWorks proves the bus still works: a request from the raw client to
// peer B's echo service comes back answered.
func (s *stack) echoWorks(c *client) {
	s.t.Helper()
	e := request(c.tw, s.b.Twin, "echo", []byte("still-alive-"+newUID()), 30)
	c.send(e)
	a := c.expectAnswer(e.Uid, 15*time.Second)
	if !a.IsResponse() {
		s.t.Fatalf("echo after the attack answered %v", a)
	}
}

// relayDropped reads rmb_relay_dropped_total{reason}.
func (s *stack) relayDropped(reason string) float64 {
	s.t.Helper()
	m, err := s.relay.Metrics(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return m.Sum("rmb_relay_dropped_total", map[string]string{"reason": reason})
}

// peerMetric sums a peer metric.
func (s *stack) peerMetric(p *harness.Peer, name string, match map[string]string) float64 {
	s.t.Helper()
	m, err := p.Metrics(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return m.Sum(name, match)
}

// post sends body to the relay's federation endpoint.
func (s *stack) post(body []byte) (int, string) {
	s.t.Helper()
	return postTo(s.t, s.ctx, s.relay.HTTP()+"/", body, nil)
}

func postTo(t testing.TB, ctx context.Context, url string, body []byte, hdr http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(msg)
}

// closeStatus is the WebSocket close code of err, or -1.
func closeStatus(err error) websocket.StatusCode {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// waitFor polls f.
func (s *stack) waitFor(d time.Duration, f func() error) {
	s.t.Helper()
	if err := harness.WaitFor(s.ctx, d, f); err != nil {
		s.t.Fatal(err)
	}
}

// relayMetric sums a metric of the stack's relay.
func (s *stack) relayMetric(name string, match map[string]string) float64 {
	s.t.Helper()
	m, err := s.relay.Metrics(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return m.Sum(name, match)
}
