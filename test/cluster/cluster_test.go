// Package cluster runs the real binaries as one relay cluster: three
// rmb-relay instances of one domain list, each on its own node of a real
// three-node NATS cluster (natstest), sharing one redis-server, with real
// rmb-peer processes spread over them.
//
// TestMain builds cmd/registrar, cmd/relay and cmd/peer into a temporary
// directory.
package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/natstest"
	"github.com/rmb-go/rmb/test/harness"
)

var bins *harness.Bins

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rmb-cluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = harness.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster: cannot build the binaries or find redis-server:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const ttl = 30

// Three peers, one on each instance, each calling the two others at once
// (every direction crosses the NATS cluster); then a peer goes away,
// requests for it are stored in the shared Redis, and it comes back on
// another instance and answers them all.
func TestClusterBinaries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := startInstances(t, ctx, nil)
	c, reg, relays, fail := e.c, e.reg, e.relays, e.fail
	peerDB, err := c.Redis(false)
	fail(err)
	var nodes []*node
	for i, r := range relays {
		p, err := c.StartPeer(ctx, fmt.Sprintf("peer%d", i), reg, fmt.Sprintf("%s/%d", peerDB.URL(), i+1), r)
		fail(err)
		nodes = append(nodes, newNode(t, ctx, p, peerDB.Addr, i+1))
	}

	// Every direction, under load.
	const perBot = 50
	callEachOther(t, ctx, nodes, perBot, func() string { return c.Logs(30) })
	fail(checkCrossed(ctx, relays, 6*perBot))

	// Peer 2 goes away: requests for it are stored; it comes back on
	// instance 0 and answers them.
	gone := nodes[2]
	gone.peer.Kill()
	fail(harness.WaitFor(ctx, 30*time.Second, func() error {
		ms, err := relays[2].Metrics(ctx)
		if err != nil {
			return err
		}
		if n := ms.Sum("rmb_relay_sessions", nil); n != 0 { // only peer 2 was here
			return fmt.Errorf("%v sessions on instance 2", n)
		}
		return nil
	}))
	const stored = 20
	a := nodes[0]
	before := harness.Count(a.bot, nil, nil).Answered
	for k := range stored {
		fail(a.bot.Push(ctx, fmt.Sprint("stored", k), []uint32{gone.peer.Twin}))
	}
	fail(harness.WaitFor(ctx, 30*time.Second, func() error {
		ms, err := relays[0].Metrics(ctx)
		if err != nil {
			return err
		}
		if n := ms.Sum("rmb_relay_routed_total", map[string]string{"result": "stored"}); n < stored {
			return fmt.Errorf("%v stored", n)
		}
		return nil
	}))
	for i, arg := range gone.peer.Args {
		if arg == relays[2].URL() {
			gone.peer.Args[i] = relays[0].URL()
		}
	}
	gone.peer.Relays = relays[:1]
	fail(gone.peer.Start())
	fail(gone.peer.WaitConnected(ctx, 30*time.Second))
	if err := a.bot.WaitDone(ctx, 60*time.Second); err != nil {
		t.Fatalf("stored requests not answered after the peer came back on another instance: %v\n%s", err, c.Logs(30))
	}
	tally := harness.Count(a.bot, nil, nil)
	if tally.Answered-before != stored || tally.Clean() != "" || tally.DupResponses != 0 {
		t.Fatalf("after the reconnect: %s", tally)
	}
	if !strings.Contains(c.Logs(1000), "instance=i0") {
		t.Fatal("the logs do not name the instance")
	}
}

// env is a relay cluster of real binaries: three instances, each on its
// own NATS node, sharing one redis-server (AOF on).
type env struct {
	c      *harness.Cluster
	reg    *harness.Registrar
	relays []*harness.Relay
	fail   func(error)
}

// startInstances starts the registrar and three relay instances on free
// addresses; their domains are front (when set) and the addresses, the
// same list for all; extra are more flags for every instance.
func startInstances(t *testing.T, ctx context.Context, front func(addrs []string) string, extra ...string) *env {
	t.Helper()
	e := &env{c: harness.NewCluster(t.TempDir(), bins)}
	t.Cleanup(e.c.Close)
	e.fail = func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s", err, e.c.Logs(30))
		}
	}
	nc := natstest.StartCluster(t, 3)
	store, err := e.c.Redis(true)
	e.fail(err)
	e.reg, err = e.c.StartRegistrar(ctx)
	e.fail(err)
	var addrs []string
	for range 3 {
		a, err := harness.FreeAddr()
		e.fail(err)
		addrs = append(addrs, a)
	}
	domains := addrs
	if front != nil {
		domains = append([]string{front(addrs)}, addrs...)
	}
	for i, a := range addrs {
		r, err := e.c.StartRelay(ctx, e.reg, harness.RelayOptions{
			Name: fmt.Sprintf("relay%d", i), Addr: a, Domains: domains, Redis: store.URL(),
			Extra: append([]string{"--nats", nc.Nodes[i].URL, "--instance", fmt.Sprintf("i%d", i)}, extra...),
		})
		e.fail(err)
		e.relays = append(e.relays, r)
	}
	return e
}
