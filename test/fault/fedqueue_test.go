package fault

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/test/harness"
)

// TestFederationQueueSurvivesKill: the sending relay (--redis) accepts
// requests for a relay that is down, is killed with -9 while they wait,
// and posts them after its restart; every request gets its real answer.
// The caller is a raw WebSocket client that never sends a request twice,
// so only the relay's durable federation queue can deliver them.
func TestFederationQueueSurvivesKill(t *testing.T) {
	t.Parallel()
	const n = 20
	ctx := ctxFor(t)
	c := harness.NewCluster(t.TempDir(), bins)
	t.Cleanup(c.Close)
	fail := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, c.Logs(30))
		}
	}
	reg, err := c.StartRegistrar(ctx)
	fail("registrar", err)
	rs, err := c.Redis(true)
	fail("redis", err)
	r1, err := c.StartRelay(ctx, reg, harness.RelayOptions{Name: "relay1", Redis: rs.URL()})
	fail("relay1", err)
	r2, err := c.StartRelay(ctx, reg, harness.RelayOptions{Name: "relay2"})
	fail("relay2", err)
	b, err := c.StartPeer(ctx, "peerB", reg, rs.URL()+"/2", r2)
	fail("peerB", err)
	rdbB := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 2})
	t.Cleanup(func() { rdbB.Close() })
	echo := harness.NewEcho(rdbB, "echo")
	ectx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	go echo.Run(ectx)

	m, _ := identity.NewMnemonic()
	id, err := identity.FromSecret(m, identity.Ed25519)
	fail("identity", err)
	tw, err := reg.Client.Register(ctx, id, []string{r1.Addr})
	fail("register", err)
	dial := func() *websocket.Conn {
		t.Helper()
		tok, err := identity.NewToken(id, tw.ID, "", time.Now(), time.Hour)
		fail("token", err)
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, _, err := websocket.Dial(dctx, r1.URL()+"/?"+tok, nil)
		fail("dial relay1", err)
		conn.SetReadLimit(4 << 20)
		t.Cleanup(func() { conn.CloseNow() })
		return conn
	}
	conn := dial()
	uids := map[string]bool{}
	send := func(payload string) {
		t.Helper()
		e := envelope.NewRequest(fmt.Sprintf("fq-%d-%s", time.Now().UnixNano(), payload), "echo", []byte(payload), 120)
		e.Source, e.Destination = envelope.NewAddress(tw.ID, ""), envelope.NewAddress(b.Twin, "")
		e.Stamp(time.Now())
		e.Sign(id)
		raw, err := envelope.Marshal(e)
		fail("marshal", err)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		fail("send", conn.Write(wctx, websocket.MessageBinary, raw))
		uids[e.Uid] = true
	}
	// answers reads until every uid is answered (an error answer fails).
	answers := func() {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		for len(uids) > 0 {
			_, raw, err := conn.Read(rctx)
			if err != nil {
				t.Fatalf("%d requests unanswered: %v\n%s", len(uids), err, c.Logs(30))
			}
			e, err := envelope.Unmarshal(raw, 0)
			fail("answer", err)
			if e.IsError() {
				t.Fatalf("error answer %d %q", e.GetError().GetCode(), e.GetError().GetMessage())
			}
			if !uids[e.Uid] {
				t.Fatalf("answer to an unknown or answered request %s", e.Uid)
			}
			delete(uids, e.Uid)
		}
	}
	send("warmup")
	answers()

	r2.Stop() // the destination relay is down
	for i := range n {
		send(fmt.Sprint("held-", i))
	}
	err = harness.WaitFor(ctx, 30*time.Second, func() error {
		ms, err := r1.Metrics(ctx)
		if err != nil {
			return err
		}
		if h := ms.Sum("rmb_relay_federation_held_jobs", nil); h != n {
			return fmt.Errorf("relay1 holds %v jobs", h)
		}
		return nil
	})
	fail("jobs held", err)
	r1.Kill()
	fail("restart relay2", r2.Start())
	fail("relay2 ready", r2.WaitReady(ctx))
	fail("restart relay1", r1.Start())
	fail("relay1 ready", r1.WaitReady(ctx))
	conn = dial() // answers stored for the session while it was away
	answers()
	for i := range n {
		if s := echo.Seen(fmt.Sprint("held-", i)); s != 1 {
			t.Errorf("the service saw held-%d %d times", i, s)
		}
	}
}
