package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/natstest"
	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// relayTarget is what a relay run sends through: one relay, or the
// instances of one cluster, each with its own address.
type relayTarget struct {
	reg    *registrar.Client
	domain string   // what the twins register
	addrs  []string // host:port of each instance
	relays []*relay.Relay
	nats   []string // client URL of each instance's NATS node
	close  func()
}

// stats sums the instances' counters.
func (t *relayTarget) stats() (routed, dropped map[string]uint64) {
	routed, dropped = map[string]uint64{}, map[string]uint64{}
	for _, r := range t.relays {
		s := r.Stats()
		for k, v := range s.Routed {
			routed[k] += v
		}
		for k, v := range s.Dropped {
			dropped[k] += v
		}
	}
	return routed, dropped
}

func startSingle(o relay.Options) (*relayTarget, error) {
	st, err := startStack(o)
	if err != nil {
		return nil, err
	}
	return &relayTarget{reg: st.reg, domain: st.domain, addrs: []string{st.domain}, relays: []*relay.Relay{st.relay}, close: st.close}, nil
}

// startCluster runs n in-process relay instances of one cluster on
// 127.0.0.1: instance i on node i of a real n-node NATS cluster
// (nats-server processes, natstest), all on one redis-server (the shared
// store and federation state), with an in-process registrar.
func startCluster(n int, base relay.Options) (_ *relayTarget, err error) {
	dir, err := os.MkdirTemp("", "rmb-bench-cluster-")
	if err != nil {
		return nil, err
	}
	var undo []func()
	t := &relayTarget{close: func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}}
	undo = append(undo, func() { os.RemoveAll(dir) })
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	nc, err := natstest.Run(filepath.Join(dir, "nats"), n)
	if err != nil {
		return nil, err
	}
	undo = append(undo, nc.Stop)
	if err := os.Mkdir(filepath.Join(dir, "redis"), 0o700); err != nil {
		return nil, err
	}
	rs, err := redistest.Run(filepath.Join(dir, "redis"), nil)
	if err != nil {
		return nil, err
	}
	undo = append(undo, rs.Kill)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, PoolSize: 64})
	undo = append(undo, func() { rdb.Close() })

	regL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	regHTTP := &http.Server{Handler: registrar.NewServer(nil).Handler()}
	go regHTTP.Serve(regL)
	undo = append(undo, func() { regHTTP.Close() })
	t.reg = registrar.NewClient("http://"+regL.Addr().String(), nil)

	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		undo = append(undo, func() { l.Close() })
		ls = append(ls, l)
		t.addrs = append(t.addrs, l.Addr().String())
	}
	t.domain = t.addrs[0]
	for i, l := range ls {
		o := base
		o.Domains = t.addrs
		o.Directory = t.reg
		o.NATS = []string{nc.Nodes[i].URL}
		t.nats = append(t.nats, nc.Nodes[i].URL)
		o.Instance = "i" + strconv.Itoa(i)
		o.Store = relay.NewRedisStore(rdb, nil)
		o.FederationRedis = rdb
		rl, err := relay.New(&o)
		if err != nil {
			return nil, fmt.Errorf("instance %d: %w", i, err)
		}
		srv := &http.Server{Handler: rl.Handler()}
		go srv.Serve(l)
		undo = append(undo, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rl.Shutdown(ctx)
			srv.Close()
		})
		t.relays = append(t.relays, rl)
	}
	return t, nil
}

// Placement says where a run puts the two ends of each pair on a
// cluster.
type Placement string

// Placements: Mixed puts half the pairs on one instance and half across
// two (both figures from one run); Same and Cross put all of them so.
const (
	Mixed Placement = "mixed"
	Same  Placement = "same"
	Cross Placement = "cross"
)

// instancesOf returns the instances of pair s's sender and receiver
// among n, and whether they differ.
func (p Placement) instancesOf(s, n int) (send, recv int, cross bool) {
	send = s % n
	switch {
	case n < 2 || p == Same || (p != Cross && s%2 == 0):
		return send, send, false
	}
	return send, (send + 1) % n, true
}

// children sums the CPU time of this process's child processes (the
// nats-server and redis-server of a cluster run) and the resident memory
// of those whose command is name ("" for all), from /proc.
func children(name string) (cpu time.Duration, rss int64) {
	self := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15) ... rss(24)
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		j := strings.IndexByte(s, '(')
		if i < 0 || j < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 22 || f[1] != self {
			continue
		}
		if name != "" && s[j+1:i] != name {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		pages, _ := strconv.ParseInt(f[21], 10, 64)
		cpu += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
		rss += pages * int64(os.Getpagesize())
	}
	return cpu, rss
}

// NATSResult is plain NATS request/reply between two nodes of the
// cluster, for comparison with a cross-instance delivery.
type NATSResult struct {
	Requesters int
	PerSecond  float64
	Latency    Latency
}

// natsRequestReply runs requesters sequential requests of size bytes
// from node a to a responder on node b for d.
func natsRequestReply(ctx context.Context, a, b string, requesters, size int, d time.Duration) (*NATSResult, error) {
	resp, err := nats.Connect(b)
	if err != nil {
		return nil, err
	}
	defer resp.Close()
	sub, err := resp.Subscribe("bench.echo", func(m *nats.Msg) { m.Respond(m.Data) })
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := resp.Flush(); err != nil {
		return nil, err
	}
	req, err := nats.Connect(a)
	if err != nil {
		return nil, err
	}
	defer req.Close()
	// The interest spreads over the route: wait until a request finds it.
	for {
		if _, err := req.Request("bench.echo", nil, time.Second); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	payload := make([]byte, size)
	lats := make([][]time.Duration, requesters)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range requesters {
		wg.Go(func() {
			for time.Since(start) < d && ctx.Err() == nil {
				t0 := time.Now()
				if _, err := req.Request("bench.echo", payload, 5*time.Second); err != nil {
					return
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return &NATSResult{Requesters: requesters, PerSecond: float64(len(all)) / el.Seconds(), Latency: summarize(all)}, nil
}
