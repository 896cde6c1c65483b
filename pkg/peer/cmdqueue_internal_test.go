package peer

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// TestSweepScript: the sweep removes exactly the entries past their
// deadline, keeps the others in their order (services pop FIFO), leaves
// entries that are not requests alone, and reports what is left.
func TestSweepScript(t *testing.T) {
	srv := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	m, _ := identity.NewMnemonic()
	id, _ := identity.FromSecret(m, identity.Ed25519)
	p, err := New(&Options{Identity: id, Relays: []string{"ws://127.0.0.1:1"}, Registrar: nopRegistrar{}, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now().Unix()
	entry := func(ref string, start int64, exp uint64) string {
		r := redisapi.IncomingRequest{Version: 1, Ref: ref, Source: "7", Command: "x", Expiration: exp,
			Data: "ZGF0", ReplyTo: redisapi.QueueReply, Now: start}
		return string(r.AppendJSON(nil))
	}
	// Pushed in this order (LPUSH), so popped (RPOP) in this order too.
	pushed := []string{
		entry("old-1", now-100, 10),
		entry("live-1", now, 60),
		`not a request`,
		entry("old-2", now-5, 5), // deadline now: expired
		entry("live-2", now-10, 30),
		entry(`tricky "exp":1,"now":1}`, now, 90),
	}
	for _, e := range pushed {
		rdb.LPush(ctx, "msgbus.x", e)
	}
	res, err := p.runSweep(ctx, "msgbus.x", time.Unix(now, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.gone, []string{pushed[3], pushed[0]}) && !slices.Equal(res.gone, []string{pushed[0], pushed[3]}) {
		t.Errorf("removed %q", res.gone)
	}
	var popped []string
	for {
		v, err := rdb.RPop(ctx, "msgbus.x").Result()
		if err != nil {
			break
		}
		popped = append(popped, v)
	}
	want := []string{pushed[1], pushed[2], pushed[4], pushed[5]}
	if !slices.Equal(popped, want) {
		t.Errorf("left, in pop order:\n%q\nwant\n%q", popped, want)
	}
	bytes := 0
	for _, w := range want {
		bytes += len(w)
	}
	if res.left != 4 || res.bytes != int64(bytes) || res.due != now+20 {
		t.Errorf("left %d, %d bytes, due %d; want 4, %d, %d", res.left, res.bytes, res.due, bytes, now+20)
	}
	// An empty or missing list costs nothing and reports nothing.
	if res, err := p.runSweep(ctx, "msgbus.none", time.Now()); err != nil || res.left != 0 || len(res.gone) != 0 {
		t.Errorf("missing list: %+v %v", res, err)
	}
}
