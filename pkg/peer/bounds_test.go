package peer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

// requestTTL is r.request with a TTL of its own.
func (r *rawTwin) requestTTL(uid, cmd string, payload []byte, dst uint32, ttl uint64) *envelope.Envelope {
	env := envelope.NewRequest(uid, cmd, payload, ttl)
	env.Source = envelope.NewAddress(r.twin, "")
	env.Destination = envelope.NewAddress(dst, "")
	env.Stamp(time.Now())
	env.Sign(r.id)
	return env
}

// inbox reads everything the raw twin receives into a channel, so a test
// can wait for an envelope without a read timeout (which would close the
// connection).
func (r *rawTwin) inbox() <-chan *envelope.Envelope {
	ch := make(chan *envelope.Envelope, 1024)
	go func() {
		defer close(ch)
		for {
			_, b, err := r.conn.Read(context.Background())
			if err != nil {
				return
			}
			if env, err := envelope.Unmarshal(b, 0); err == nil {
				ch <- env
			}
		}
	}()
	return ch
}

// expectError reads until the answer to uid and checks it is an error
// with code.
func (r *rawTwin) expectError(uid string, code uint32, d time.Duration) *envelope.Envelope {
	r.t.Helper()
	deadline := time.Now().Add(d)
	for {
		e := r.recv(time.Until(deadline))
		if e.Uid != uid {
			continue
		}
		if !e.IsError() || e.GetError().GetCode() != code {
			r.t.Fatalf("answer to %s: %v, want error %d", uid, e, code)
		}
		return e
	}
}

// TestReservedCommands: a remote twin cannot push onto a client's reply
// queue (msgbus.reply.*) or the peer's own lists (msgbus.system.*), nor
// name a command Redis keys should not hold.
func TestReservedCommands(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	raw := s.newRawTwin(false, 0)
	ctx := context.Background()
	// A client of b waits on its reply queue.
	ret := "msgbus.reply.0b3e5f1c-victim"
	forged := []byte(`{"ver":1,"ref":"0b3e5f1c-victim","dat":"","src":"55","shm":"","now":1,"err":null}`)
	for i, tt := range []struct {
		cmd  string
		code uint32
	}{
		{strings.TrimPrefix(ret, "msgbus."), envelope.CodeDenied},
		{"system.local", envelope.CodeDenied},
		{"system.reply", envelope.CodeDenied},
		{"system.deadletter", envelope.CodeDenied},
		{"system", envelope.CodeDenied},
		{"calc add", envelope.CodeBadPayload},
		{"calc.*", envelope.CodeBadPayload},
		{strings.Repeat("x", peer.MaxCommandLen+1), envelope.CodeBadPayload},
	} {
		uid := fmt.Sprint("reserved-", i)
		raw.send(raw.request(uid, tt.cmd, forged, b.Twin()))
		e := raw.expectError(uid, tt.code, 10*time.Second)
		if strings.Contains(e.GetError().GetMessage(), strings.Repeat("x", 100)) {
			t.Errorf("the error quotes the whole long name back")
		}
	}
	for _, q := range []string{ret, "msgbus.system.local", "msgbus.system.deadletter", "msgbus.system", "msgbus.calc add"} {
		if n, err := b.rdb.LLen(ctx, q).Result(); err != nil || n != 0 {
			t.Errorf("%s holds %d entries (%v)", q, n, err)
		}
	}
	// An ordinary command still reaches its service.
	serve(t, b.rdb, "echo", echo)
	raw.send(raw.request("ok", "echo", []byte("hi"), b.Twin()))
	if a := raw.recv(10 * time.Second); a.Uid != "ok" || !a.IsResponse() {
		t.Fatalf("echo: %v", a)
	}
}

// TestUnservedRequestsLeave: requests for a command nobody serves leave
// msgbus.<cmd> at their deadline; the sender gets 408 and each is
// dead-lettered.
func TestUnservedRequestsLeave(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer(func(o *peer.Options) { o.CommandSweepInterval = 100 * time.Millisecond })
	raw := s.newRawTwin(false, 0)
	ctx := context.Background()
	const n = 5
	for i := range n {
		raw.send(raw.requestTTL(fmt.Sprint("nobody-", i), "nobody.home", []byte("payload"), b.Twin(), 2))
	}
	waitFor(t, 10*time.Second, func() error {
		if l, _ := b.rdb.LLen(ctx, "msgbus.nobody.home").Result(); l != n {
			return fmt.Errorf("%d of %d queued", l, n)
		}
		return nil
	})
	got := map[string]bool{}
	for len(got) < n {
		e := raw.recv(15 * time.Second)
		if !e.IsError() || e.GetError().GetCode() != envelope.CodeTimeout || e.GetSource().GetTwin() != b.Twin() {
			t.Fatalf("want 408 from the peer, got %v", e)
		}
		got[e.Uid] = true
	}
	if l, _ := b.rdb.LLen(ctx, "msgbus.nobody.home").Result(); l != 0 {
		t.Errorf("%d expired requests stay in msgbus.nobody.home", l)
	}
	dead, err := b.rdb.LRange(ctx, peer.DeadLetterQueue, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != n {
		t.Fatalf("%d dead letters, want %d", len(dead), n)
	}
	var d peer.DeadLetter
	json.Unmarshal([]byte(dead[0]), &d)
	if d.Queue != "msgbus.nobody.home" || d.Code != envelope.CodeTimeout || d.Dst != raw.twin || !strings.HasPrefix(d.UID, "nobody-") {
		t.Errorf("dead letter %+v", d)
	}
}

// TestCommandQueueBounds: command lists are bounded in bytes, and in how
// many there are; requests over a bound are refused with 429 at once.
// Serve refuses the commands it does not list with 404, before Redis.
func TestCommandQueueBounds(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer(func(o *peer.Options) {
		o.MaxQueueBytes = 20000
		o.MaxCommandQueues = 3
		o.Serve = []string{"fill*", "q.*", "echo"}
	})
	raw := s.newRawTwin(false, 0)
	ctx := context.Background()
	payload := make([]byte, 2000)
	refused := 0
	for i := range 20 {
		uid := fmt.Sprint("fill-", i)
		raw.send(raw.request(uid, "fill", payload, b.Twin()))
	}
	// Each is either queued or refused.
	in := raw.inbox()
	waitFor(t, 20*time.Second, func() error {
		select {
		case e := <-in:
			if !e.IsError() || e.GetError().GetCode() != envelope.CodeRateLimited {
				t.Fatalf("want 429, got %v", e)
			}
			refused++
		default:
		}
		if l, _ := b.rdb.LLen(ctx, "msgbus.fill").Result(); int(l)+refused != 20 {
			return fmt.Errorf("%d queued, %d refused", l, refused)
		}
		return nil
	})
	if refused == 0 {
		t.Fatal("no request refused")
	}
	entries, _ := b.rdb.LRange(ctx, "msgbus.fill", 0, -1).Result()
	size := 0
	for _, e := range entries {
		size += len(e)
	}
	if size > 20000 || len(entries)+refused != 20 {
		t.Errorf("msgbus.fill holds %d entries, %d bytes; %d refused", len(entries), size, refused)
	}
	expect := func(uid string, code uint32) {
		t.Helper()
		select {
		case e := <-in:
			if e.Uid != uid || !e.IsError() || e.GetError().GetCode() != code {
				t.Fatalf("want error %d to %s, got %v", code, uid, e)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer to %s", uid)
		}
	}
	// fill is one list; two more may come, not a third.
	for _, cmd := range []string{"q.a", "q.b", "q.c"} {
		raw.send(raw.request(cmd, cmd, nil, b.Twin()))
	}
	expect("q.c", envelope.CodeRateLimited)
	if n, _ := b.rdb.Exists(ctx, "msgbus.q.c").Result(); n != 0 {
		t.Error("msgbus.q.c exists")
	}
	raw.send(raw.request("other", "other", nil, b.Twin()))
	expect("other", envelope.CodeNotFound)
	mfs, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauges := map[string]float64{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetGauge() != nil {
			gauges[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if gauges["rmb_peer_command_queues"] != 3 || gauges["rmb_peer_command_queue_bytes"] < float64(size) {
		t.Errorf("gauges %v; want 3 lists and at least %d bytes", gauges, size)
	}
	if n, _ := b.rdb.Exists(ctx, "msgbus.other").Result(); n != 0 {
		t.Error("msgbus.other exists")
	}
}

// TestGuardedRetQueue: a local client that waits on a ret queue a command
// name could reach (msgbus.myapp.replies) is guarded: a remote request
// for command myapp.replies is refused with 401 while the client waits.
func TestGuardedRetQueue(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	raw := s.newRawTwin(false, 0)
	ctx := context.Background()
	const ret = "msgbus.myapp.replies"
	// B's client calls the raw twin, which never answers.
	pushRequest(t, b.rdb, request("anything", "x", ret, 30, raw.twin))
	in := raw.inbox()
	select {
	case e := <-in:
		if !e.IsRequest() {
			t.Fatalf("raw twin got %v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client's request did not reach the raw twin")
	}
	forged := []byte(`{"ver":1,"ref":"ref-` + ret + `","dat":"","src":"` + fmt.Sprint(raw.twin) + `","shm":"","now":1,"err":null}`)
	raw.send(raw.request("forge", "myapp.replies", forged, b.Twin()))
	select {
	case e := <-in:
		if e.Uid != "forge" || !e.IsError() || e.GetError().GetCode() != envelope.CodeDenied {
			t.Fatalf("want 401 to forge, got %v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the forged request")
	}
	if n, _ := b.rdb.LLen(ctx, ret).Result(); n != 0 {
		t.Errorf("%s holds %d entries", ret, n)
	}
}
