package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/nginxtest"
	"github.com/rmb-go/rmb/internal/wsframe"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/test/harness"
)

// perAddr is --max-sessions-per-address of the instances behind nginx.
const perAddr = 3

// The documented reverse-proxy setup: a real nginx (the configuration of
// docs/scaling.md, internal/nginxtest) in front of three instances of
// one cluster, each started with --trusted-proxy 127.0.0.1/32. Peers
// reach the cluster through nginx only; the instances count sessions by
// the client address nginx puts in X-Forwarded-For; a peer on a relay
// outside the cluster and the three peers inside call each other in
// every direction, so federation POSTs reach the cluster through nginx.
func TestClusterBehindNginx(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var ng *nginxtest.Server
	e := startInstances(t, ctx, func(addrs []string) string {
		ng = nginxtest.Start(t, addrs)
		return ng.Addr
	}, "--trusted-proxy", "127.0.0.1/32", "--max-sessions-per-address", fmt.Sprint(perAddr))
	c, reg, relays, fail := e.c, e.reg, e.relays, e.fail
	fail = func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s\n%s", err, c.Logs(30), ng.Logs())
		}
	}
	front := &harness.Relay{Addr: ng.Addr}

	// Three peers through nginx: round robin puts one on each instance.
	peerDB, err := c.Redis(false)
	fail(err)
	var nodes []*node
	for i := range 3 {
		p, err := c.StartPeer(ctx, fmt.Sprintf("peer%d", i), reg, fmt.Sprintf("%s/%d", peerDB.URL(), i+1), front)
		fail(err)
		nodes = append(nodes, newNode(t, ctx, p, peerDB.Addr, i+1))
	}
	for i, r := range relays {
		ms, err := r.Metrics(ctx)
		fail(err)
		if n := ms.Sum("rmb_relay_sessions", nil); n != 1 {
			t.Fatalf("instance %d holds %v sessions, want 1 (nginx's round robin spreads the peers)", i, n)
		}
	}
	// A relay outside the cluster, with a peer of its own: it federates to
	// the cluster's domain, nginx's address.
	outside, err := c.StartRelay(ctx, reg, harness.RelayOptions{Name: "outside"})
	fail(err)
	p, err := c.StartPeer(ctx, "outsider", reg, peerDB.URL()+"/4", outside)
	fail(err)
	nodes = append(nodes, newNode(t, ctx, p, peerDB.Addr, 4))

	// Every peer calls every other one at once.
	const perBot = 30
	callEachOther(t, ctx, nodes, perBot, func() string { return c.Logs(30) + ng.Logs() })
	fail(checkCrossed(ctx, relays, 6*perBot))
	ms, err := outside.Metrics(ctx)
	fail(err)
	if n := ms.Sum("rmb_relay_routed_total", map[string]string{"result": "federated"}); n < perBot {
		t.Fatalf("the outside relay federated %v envelopes, want at least %d", n, perBot)
	}
	// The outside relay's POSTs went through nginx and were accepted.
	fail(harness.WaitFor(ctx, 20*time.Second, func() error {
		log := ng.AccessLog()
		ok := len(regexp.MustCompile(`"POST /[^"]*" 2\d\d `).FindAllString(log, -1))
		bad := regexp.MustCompile(`"POST /[^"]*" [^2]\d\d `).FindAllString(log, -1)
		if len(bad) > 0 {
			return fmt.Errorf("federation POSTs refused through nginx: %q", bad)
		}
		if ok < perBot/3 {
			return fmt.Errorf("%d federation POSTs in nginx's access log, want at least %d", ok, perBot/3)
		}
		return nil
	}))

	t.Run("XForwardedFor", func(t *testing.T) { checkForwardedFor(t, ctx, reg, ng.Addr) })
}

// checkForwardedFor connects sessions through nginx from two loopback
// addresses that are not the proxy's: 127.0.0.2 until an instance refuses
// it ("too many sessions from this address"), then 127.0.0.3 three times
// in a row, which round robin spreads over every instance, the full one
// too. They are let in only if the instances count nginx's
// X-Forwarded-For and not nginx's own address.
func checkForwardedFor(t *testing.T, ctx context.Context, reg *harness.Registrar, front string) {
	a := newTwinDialer(t, ctx, reg, front, "127.0.0.2")
	b := newTwinDialer(t, ctx, reg, front, "127.0.0.3")
	refused := false
	for i := range 3*perAddr + 1 {
		status, err := a.connect(ctx, fmt.Sprint("a", i))
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusTooManyRequests {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatalf("%d sessions from one address through nginx and none refused: the per-address bound is not applied", 3*perAddr+1)
	}
	for i := range 3 {
		status, err := b.connect(ctx, fmt.Sprint("b", i))
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusSwitchingProtocols {
			t.Fatalf("session %d from another address answered %d: the instances do not count X-Forwarded-For", i, status)
		}
	}
}

// twinDialer opens sessions of one registered twin from a given source
// address.
type twinDialer struct {
	id   *identity.Identity
	twin uint32
	url  string
	tr   *http.Transport
}

func newTwinDialer(t *testing.T, ctx context.Context, reg *harness.Registrar, front, source string) *twinDialer {
	t.Helper()
	m, err := identity.NewMnemonic()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.FromSecret(m, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	tw, err := reg.Client.Register(ctx, id, []string{front})
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	td := &twinDialer{id: id, twin: tw.ID, url: "ws://" + front + "/", tr: &http.Transport{DialContext: d.DialContext}}
	t.Cleanup(td.tr.CloseIdleConnections)
	return td
}

// connect opens session sid and keeps it open until the test ends; it
// returns the HTTP status of the handshake.
func (d *twinDialer) connect(ctx context.Context, sid string) (int, error) {
	tok, err := identity.NewToken(d.id, d.twin, sid, time.Now(), 10*time.Minute)
	if err != nil {
		return 0, err
	}
	conn, resp, err := wsframe.DialHTTP(ctx, d.tr, d.url+"?"+tok, &wsframe.Options{})
	if resp == nil {
		return 0, err
	}
	if conn != nil {
		go func() { // answer the relay's pings until the session ends
			for {
				if _, _, err := conn.ReadMessage(nil); err != nil {
					return
				}
			}
		}()
		context.AfterFunc(ctx, func() { conn.CloseNow() })
	}
	return resp.StatusCode, nil
}
