package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/test/harness"
)

// node is a peer with its Redis, a bot that calls and an echo service
// that answers.
type node struct {
	peer *harness.Peer
	rdb  *redis.Client
	bot  *harness.Bot
	echo *harness.Echo
}

// newNode serves peer p, whose Redis is database db of the server at
// addr, with a bot and an echo service until ctx ends.
func newNode(t *testing.T, ctx context.Context, p *harness.Peer, addr string, db int) *node {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	t.Cleanup(func() { rdb.Close() })
	n := &node{peer: p, rdb: rdb, bot: harness.NewBot(rdb, fmt.Sprint("b", db), "echo", ttl), echo: harness.NewEcho(rdb, "echo")}
	go n.echo.Run(ctx)
	go n.bot.Collect(ctx)
	return n
}

// callEachOther has every node send perBot requests to all the others at
// once and fails unless each is answered by every destination exactly
// once; logs describes the scene for a failure.
func callEachOther(t *testing.T, ctx context.Context, nodes []*node, perBot int, logs func() string) {
	t.Helper()
	var wg sync.WaitGroup
	for i, n := range nodes {
		var dst []uint32
		for j, o := range nodes {
			if j != i {
				dst = append(dst, o.peer.Twin)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.bot.Load(ctx, fmt.Sprint("call", i), perBot, 10*time.Millisecond, dst, nil)
		}()
	}
	wg.Wait()
	for i, n := range nodes {
		if err := n.bot.WaitDone(ctx, 90*time.Second); err != nil {
			t.Fatalf("bot %d: %v\n%s", i, err, logs())
		}
		tally := harness.Count(n.bot, nil, nil)
		if bad := tally.Clean(); bad != "" || tally.Answered != (len(nodes)-1)*perBot || tally.DupResponses != 0 {
			t.Fatalf("bot %d: %s; %s", i, bad, tally)
		}
	}
}

// checkCrossed says whether at least want envelopes (requests and
// answers) crossed from one instance to another, by the instances' own
// counts.
func checkCrossed(ctx context.Context, relays []*harness.Relay, want int) error {
	var cross float64
	for _, r := range relays {
		ms, err := r.Metrics(ctx)
		if err != nil {
			return err
		}
		cross += ms.Sum("rmb_relay_routed_total", map[string]string{"result": "cluster"})
	}
	if cross < float64(want) {
		return fmt.Errorf("%v envelopes crossed instances, want at least %d (requests and answers)", cross, want)
	}
	return nil
}
