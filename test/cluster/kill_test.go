package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/test/harness"
)

// balancer is a TCP load balancer in front of the instances, as nginx or
// a cloud balancer would be: each connection goes to the next backend
// that accepts it, round robin.
type balancer struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint32
	wg       sync.WaitGroup
}

func startBalancer(t *testing.T, backends []string) *balancer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.handle(c)
	}
}

func (b *balancer) handle(c net.Conn) {
	defer c.Close()
	start := int(b.next.Add(1) - 1)
	for i := range b.backends {
		s, err := net.DialTimeout("tcp", b.backends[(start+i)%len(b.backends)], time.Second)
		if err != nil {
			continue
		}
		defer s.Close()
		done := make(chan struct{}, 2)
		go func() { io.Copy(s, c); s.Close(); done <- struct{}{} }()
		go func() { io.Copy(c, s); c.Close(); done <- struct{}{} }()
		<-done
		<-done
		return
	}
}

// Kill -9 the instance holding the callee's session under a steady load
// of requests with unique ids: the callee's peer reconnects through the
// balancer to another instance, and every request ends as its answer or
// an error answer: none lost, no duplicate response.
func TestClusterInstanceKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var lb *balancer
	e := startInstances(t, ctx, func(addrs []string) string {
		lb = startBalancer(t, addrs)
		return lb.ln.Addr().String()
	})
	c, reg, relays, fail := e.c, e.reg, e.relays, e.fail
	front := &harness.Relay{Addr: lb.ln.Addr().String()}
	peerDB, err := c.Redis(true)
	fail(err)
	// Round robin: A lands on instance 0, B on instance 1.
	_, err = c.StartPeer(ctx, "peerA", reg, peerDB.URL()+"/1", front)
	fail(err)
	b, err := c.StartPeer(ctx, "peerB", reg, peerDB.URL()+"/2", front)
	fail(err)
	rdbA := redis.NewClient(&redis.Options{Addr: peerDB.Addr, DB: 1})
	rdbB := redis.NewClient(&redis.Options{Addr: peerDB.Addr, DB: 2})
	t.Cleanup(func() { rdbA.Close(); rdbB.Close() })
	bot := harness.NewBot(rdbA, "kill", "echo", 20)
	echo := harness.NewEcho(rdbB, "echo")
	echo.Workers, echo.Delay = 32, 50*time.Millisecond
	go echo.Run(ctx)
	go bot.Collect(ctx)
	fail(bot.Push(ctx, "warmup", []uint32{b.Twin}))
	fail(bot.WaitDone(ctx, 30*time.Second))
	ms, err := relays[1].Metrics(ctx)
	fail(err)
	if n := ms.Sum("rmb_relay_sessions", nil); n != 1 {
		t.Fatalf("instance 1 holds %v sessions, want peer B's", n)
	}

	const requests = 300
	bot.Load(ctx, "kill", requests, 5*time.Millisecond, []uint32{b.Twin}, func(i int) {
		if i == requests/3 {
			relays[1].Kill()
		}
	})
	if err := bot.WaitDone(ctx, 60*time.Second); err != nil {
		t.Errorf("not every request ended: %v", err)
	}
	dead, err := harness.DeadLetters(ctx, rdbA)
	fail(err)
	tally := harness.Count(bot, echo, dead)
	t.Logf("%s", tally)
	if bad := tally.Clean(); bad != "" || tally.DupResponses != 0 {
		t.Fatalf("%s; %s\n%s", bad, tally, c.Logs(40))
	}
	if tally.Answered < requests/2 {
		t.Fatalf("too little load went through: %s", tally)
	}
	fail(b.WaitConnected(ctx, 30*time.Second))
	// Both peers are now served by the two instances left.
	fail(harness.WaitFor(ctx, 30*time.Second, func() error {
		var n float64
		for _, r := range []*harness.Relay{relays[0], relays[2]} {
			ms, err := r.Metrics(ctx)
			if err != nil {
				return err
			}
			n += ms.Sum("rmb_relay_sessions", nil)
		}
		if n != 2 {
			return fmt.Errorf("%v sessions on the instances left, want 2", n)
		}
		return nil
	}))
}
