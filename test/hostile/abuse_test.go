package hostile

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/test/harness"
)

// TestOversized: a WebSocket frame over the relay's limit closes that
// session with 1009 and nothing else; a federation body over the limit
// gets 413, a registrar body over its limit gets 413.
func TestOversized(t *testing.T) {
	t.Parallel()
	s := newStack(t, "--max-envelope-size", "65536")
	x := s.newTwin()
	victim := s.dial(x)
	other := s.dial(s.newTwin())

	big := request(x, s.b.Twin, "echo", bytes.Repeat([]byte("x"), 70_000), 30)
	victim.send(big)
	_, err := victim.recv(5 * time.Second)
	if got := closeStatus(err); got != websocket.StatusMessageTooBig {
		t.Errorf("oversized frame: read ended with %v (status %d), want close 1009", err, got)
	}
	if got := s.relayDropped("too_big"); got != 1 {
		t.Errorf("dropped_total{too_big} = %v, want 1", got)
	}
	s.echoWorks(other)
	s.echoWorks(s.dial(x)) // the twin itself may reconnect

	code, msg := s.post(marshal(t, request(x, s.b.Twin, "echo", bytes.Repeat([]byte("y"), 70_000), 30)))
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized federation body: %d %s, want 413", code, msg)
	}
	// An endless body is cut at the limit, not read to the end.
	code, _ = postTo(t, s.ctx, s.relay.HTTP()+"/", bytes.Repeat([]byte{0x0a}, 8<<20), nil)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("8 MiB federation body: %d, want 413", code)
	}
	hdr := http.Header{"Content-Type": {"application/json"}}
	code, msg = postTo(t, s.ctx, s.reg.URL+"/v1/accounts", []byte(`{"relays":["`+strings.Repeat("r", 1<<20)+`"]}`), hdr)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("1 MiB registrar body: %d %s, want 413", code, msg)
	}
	// A request from a local client that would make an envelope over the
	// relay's limit must not cost the peer its relay connection.
	bot := harness.NewBot(s.rdbA, "oversize", "echo", 20)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go bot.Collect(ctx)
	bot.PushRaw(ctx, "huge", 1, bot.Request("huge", []uint32{s.b.Twin}, bytes.Repeat([]byte("z"), 2<<20)))
	bot.Push(ctx, "after-huge", []uint32{s.b.Twin})
	if err := bot.WaitDone(ctx, 30*time.Second); err != nil {
		t.Fatalf("oversized local request: %v\n%s", err, s.c.Logs(20))
	}
	// A service whose answer would be an envelope over the limit: the
	// caller gets an error answer, not a 408.
	go func() {
		for ctx.Err() == nil {
			res, err := s.rdbB.BRPop(ctx, time.Second, "msgbus.inflate").Result()
			if err != nil {
				continue
			}
			var req redisapi.IncomingRequest
			json.Unmarshal([]byte(res[1]), &req)
			out, _ := json.Marshal(redisapi.OutgoingResponse{Version: 1, Ref: req.Ref, Destination: req.Source,
				Data: base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("i"), 2<<20))})
			s.rdbB.LPush(ctx, redisapi.QueueReply, out)
		}
	}()
	inflate := harness.NewBot(s.rdbA, "inflate", "inflate", 20)
	go inflate.Collect(ctx)
	inflate.Push(ctx, "inflate-me", []uint32{s.b.Twin})
	if err := inflate.WaitDone(ctx, 30*time.Second); err != nil {
		t.Fatalf("oversized answer: %v", err)
	}
	it := harness.Count(inflate, nil, nil)
	t.Logf("oversized answer: %s", it)
	if it.Errored != 1 || it.Timeouts != 0 {
		t.Errorf("want an error answer (not a timeout) for an answer over the limit: %s", it)
	}
	dead, _ := harness.DeadLetters(ctx, s.rdbA)
	tally := harness.Count(bot, nil, dead)
	t.Logf("oversized local request: %s", tally)
	if tally.Answered != 1 || tally.Errored != 1 || tally.DeadLettered != 1 {
		t.Errorf("want the huge request errored and dead-lettered, the next one answered: %s", tally)
	}
	// 1 frame + 2 federation bodies, nothing from the peers.
	if got := s.relayDropped("too_big"); got != 3 {
		t.Errorf("the peer sent the relay an oversized envelope (dropped_total{too_big} = %v, want 3)", got)
	}
}

// TestTruncatedProtobuf: truncated and random bytes on a session are
// dropped and counted; the session stays up. Over federation they get 400.
func TestTruncatedProtobuf(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	c := s.dial(x)
	full := marshal(t, request(x, s.b.Twin, "echo", []byte("truncated"), 30))
	bad := [][]byte{full[:len(full)/2], full[:3], {0xff, 0xff, 0xff, 0xff}, {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}}
	for _, b := range bad {
		if err := c.sendRaw(b); err != nil {
			t.Fatal(err)
		}
	}
	s.echoWorks(c) // same session, still up
	if got := s.relayDropped("malformed"); got < float64(len(bad)) {
		t.Errorf("dropped_total{malformed} = %v, want >= %d", got, len(bad))
	}
	for _, b := range bad {
		if code, msg := s.post(b); code != http.StatusBadRequest {
			t.Errorf("truncated federation body %x: %d %s, want 400", b, code, msg)
		}
	}
	if n := s.echo.Seen("truncated"); n != 0 {
		t.Errorf("service saw a truncated envelope")
	}
}

// TestNonUTF8Command: a command that is not UTF-8 (a proto3 string field)
// passes the relay, which reads only routing fields, and is dropped by the
// peer as malformed; the peer goes on serving.
func TestNonUTF8Command(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	c := s.dial(x)
	e := request(x, s.b.Twin, "\xff\xfe\xfd\xfc", []byte("non-utf8"), 30)
	e.Sign(x.id) // signed over the raw bytes
	bad := e.GetRequest().Command
	e.GetRequest().Command = "ZQZQ" // proto refuses to marshal invalid UTF-8
	b := bytes.Replace(marshal(t, e), []byte("ZQZQ"), []byte(bad), 1)
	before := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "malformed"})
	if err := c.sendRaw(b); err != nil {
		t.Fatal(err)
	}
	s.waitFor(5*time.Second, func() error {
		if s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "malformed"}) <= before {
			return errorf("peer B did not count the envelope as malformed")
		}
		return nil
	})
	s.echoWorks(c)

	// Through Redis: invalid UTF-8 inside the JSON of a local request.
	bot := harness.NewBot(s.rdbA, "utf8", "echo\xff\xfe", 5)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go bot.Collect(ctx)
	raw := []byte(`{"ver":1,"ref":"bad-utf8","cmd":"echo` + "\xff\xfe" + `","exp":5,"dat":"","dst":[` +
		fmt.Sprint(s.b.Twin) + `],"ret":"` + bot.Ret + `","shm":"","now":0}`)
	bot.PushRaw(ctx, "bad-utf8", 1, raw)
	if err := bot.WaitDone(ctx, 20*time.Second); err != nil {
		t.Fatalf("non-UTF-8 command from Redis: %v", err)
	}
	t.Logf("non-UTF-8 command through Redis: %s", harness.Count(bot, nil, nil))
}

// TestHostileJSON: deeply nested, huge, non-UTF-8 and wrongly typed JSON
// on the peer's Redis queues is dead-lettered (with an error response when
// the message names its ret) and the peer keeps serving, its memory
// bounded.
func TestHostileJSON(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	bot := harness.NewBot(s.rdbA, "json", "echo", 20)
	go bot.Collect(ctx)
	rss0, _ := s.a.RSS()

	deep := strings.Repeat("[", 1_000_000) + strings.Repeat("]", 1_000_000)
	// It names its ret, but JSON too deep to parse cannot be answered.
	deepObj := `{"ver":1,"ref":"deep","cmd":"echo","dst":[1],"ret":"` + bot.Ret + `","dat":` + strings.Repeat(`{"a":`, 100_000) + `1` + strings.Repeat(`}`, 100_000) + `}`
	hugeDat := `{"ver":1,"ref":"huge-garbage","cmd":"echo","dst":[` + fmt.Sprint(s.b.Twin) + `],"ret":"` + bot.Ret + `","dat":"` + strings.Repeat("!", 16<<20) + `"}`
	garbage := []string{
		deep, deepObj,
		`{"ver":1,"ref":"x","cmd":"echo"` + strings.Repeat(`,"pad":"`+strings.Repeat("p", 1000)+`"`, 8000) + `,"dst":"nope"}`,
		"\xff\xfe\xfd not json at all",
		`{"dst":[1,2,3],"cmd":["not","a","string"]}`,
		`null`, `[]`, `"just a string"`, ``,
	}
	for _, g := range garbage {
		if err := s.rdbA.LPush(ctx, redisapi.QueueLocal, g).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// These name their ret: the caller gets an error answer.
	bot.PushRaw(ctx, "huge-garbage", 1, []byte(hugeDat))
	bot.PushRaw(ctx, "bad-dst", 1, []byte(`{"ver":1,"ref":"bad-dst","cmd":"echo","dst":[0],"ret":"`+bot.Ret+`","dat":""}`))
	// Garbage from a "service" on peer B's reply queue.
	for _, g := range []string{deep, "\xff\xfe", `{"ref":"","dst":"x"}`} {
		s.rdbB.LPush(ctx, redisapi.QueueReply, g)
	}
	// The peer is still serving.
	bot.Push(ctx, "after-garbage", []uint32{s.b.Twin})
	if err := bot.WaitDone(ctx, 30*time.Second); err != nil {
		n, _ := s.rdbA.LLen(ctx, "msgbus.system.local.processing").Result()
		t.Fatalf("%v; %d messages in msgbus.system.local.processing\n%s", err, n, s.c.Logs(20))
	}
	dead, err := harness.DeadLetters(ctx, s.rdbA)
	if err != nil {
		t.Fatal(err)
	}
	tally := harness.Count(bot, nil, dead)
	t.Logf("hostile JSON: %s; %d dead letters on peer A", tally, len(dead))
	if tally.Answered != 1 || tally.Errored != 2 || tally.DeadLettered != 2 || tally.Lost != 0 {
		t.Errorf("want 1 answered, 2 errored and dead-lettered: %s", tally)
	}
	if len(dead) != len(garbage)+2 {
		t.Errorf("%d dead letters on peer A, want %d", len(dead), len(garbage)+2)
	}
	s.waitFor(10*time.Second, func() error {
		deadB, _ := harness.DeadLetters(ctx, s.rdbB)
		if len(deadB) != 3 {
			return fmt.Errorf("%d dead letters on peer B, want 3", len(deadB))
		}
		return nil
	})
	if n, _ := s.rdbA.LLen(ctx, "msgbus.system.local.processing").Result(); n != 0 {
		t.Errorf("%d messages stuck in the processing list", n)
	}
	rss, _ := s.a.RSS()
	t.Logf("peer A RSS %d MiB before, %d MiB after ~50 MiB of hostile JSON", rss0>>20, rss>>20)
	if rss > 400<<20 {
		t.Errorf("peer A RSS %d MiB after hostile JSON", rss>>20)
	}
}

// TestIdleConnections: 10,000 TCP connections that never authenticate
// (half send nothing, half a partial HTTP request) do not stop a real
// client; the relay closes them after its header timeout (10 s) and its
// goroutines return to where they were.
func TestIdleConnections(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	x := s.newTwin()
	m0, err := s.relay.Metrics(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	g0 := m0.Sum("go_goroutines", nil)
	rss0, _ := s.relay.RSS()
	const n = 10_000
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range n {
		c, err := net.Dial("tcp", s.relay.Addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if i%2 == 1 {
			c.Write([]byte("GET /?eyJhbGciOiJSUzUxMiJ9 HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"))
		}
		conns = append(conns, c)
	}
	t.Logf("opened %d idle connections in %v", n, time.Since(start).Round(time.Millisecond))
	// A real client gets through, promptly.
	t0 := time.Now()
	c := s.dial(x)
	s.echoWorks(c)
	took := time.Since(t0)
	m1, _ := s.relay.Metrics(s.ctx)
	rss1, _ := s.relay.RSS()
	t.Logf("real client connected and answered in %v; relay: %v goroutines (from %v), RSS %d MiB (from %d MiB)",
		took.Round(time.Millisecond), m1.Sum("go_goroutines", nil), g0, rss1>>20, rss0>>20)
	if took > 5*time.Second {
		t.Errorf("a real client took %v among idle connections", took)
	}
	if rss1 > 600<<20 {
		t.Errorf("relay RSS %d MiB with %d idle connections", rss1>>20, n)
	}
	// They time out: every connection is closed by the relay.
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	deadline := time.Now().Add(25 * time.Second)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						mu.Lock()
						open++
						mu.Unlock()
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("idle connections closed by the relay after %v; %d still open", time.Since(start).Round(time.Second), open)
	if open > 0 {
		t.Errorf("%d of %d idle connections were never closed by the relay", open, n)
	}
	s.waitFor(10*time.Second, func() error {
		m, err := s.relay.Metrics(s.ctx)
		if err != nil {
			return err
		}
		if g := m.Sum("go_goroutines", nil); g > g0+20 {
			return fmt.Errorf("relay goroutines %v, were %v before the idle connections", g, g0)
		}
		return nil
	})
	s.echoWorks(c)
}

// TestClientNeverReads: a session that never reads while a sender floods
// it does not slow the other sessions; its backlog is bounded (send
// queue, then the store's per-session caps, then "destination queue is
// full" errors to the sender) and the relay closes it when a write times
// out (10 s).
func TestClientNeverReads(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	stuck, flooder, honest := s.newTwin(), s.newTwin(), s.newTwin()
	// Connected, never read.
	sc, status, err := s.dialToken(token(t, stuck.id, stuck.n, "", time.Now(), time.Minute))
	if err != nil {
		t.Fatalf("dial: %d %v", status, err)
	}
	defer sc.CloseNow()
	fc := s.dial(flooder)
	hc := s.dial(honest)
	rss0, _ := s.relay.RSS()

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	payload := bytes.Repeat([]byte("f"), 64<<10)
	var sent int
	var queueFull atomic.Int64
	go func() {
		// Read what the relay answers the flooder (queue-full errors).
		// No read timeout: coder/websocket closes a connection whose
		// read is cancelled.
		for {
			_, b, err := fc.conn.Read(ctx)
			if err != nil {
				return
			}
			if e, err := envelope.Unmarshal(b, 0); err == nil && e.IsError() {
				queueFull.Add(1)
			}
		}
	}()
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		for i := 0; i < 3000 && ctx.Err() == nil; i++ {
			e := request(flooder, stuck.n, "flood", payload, 60)
			if fc.sendRaw(marshal(t, e)) != nil {
				return
			}
			sent++
		}
	}()
	// Meanwhile the honest session keeps its latency.
	var worst time.Duration
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		s.echoWorks(hc)
		worst = max(worst, time.Since(t0))
		time.Sleep(100 * time.Millisecond)
	}
	<-floodDone
	rss1, _ := s.relay.RSS()
	t.Logf("flooded %d x 64 KiB to a session that never reads; honest round trip worst %v; relay RSS %d -> %d MiB",
		sent, worst.Round(time.Millisecond), rss0>>20, rss1>>20)
	if sent < 3000 {
		t.Errorf("the flooder's session broke after %d envelopes", sent)
	}
	if worst > 2*time.Second {
		t.Errorf("honest round trip took %v while another session was stuck", worst)
	}
	// send queue (256 x 64 KiB) + store cap (64 MiB) + socket buffers + slack.
	if rss1-rss0 > 300<<20 {
		t.Errorf("relay grew by %d MiB for one stuck session", (rss1-rss0)>>20)
	}
	// The relay gives up on the stuck session when a write times out. (A
	// count of sessions would not do: on a loaded machine a peer may miss
	// a ping and be away, reconnecting, at that moment.)
	gone := fmt.Sprintf(`msg="session disconnected" twin=%d `, stuck.n)
	s.waitFor(60*time.Second, func() error {
		if !strings.Contains(s.relay.Tail(1<<20), gone) {
			return fmt.Errorf("the relay did not close the stuck session:\n%s", s.relay.Tail(20))
		}
		return nil
	})
	m, err := s.relay.Metrics(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Sum("rmb_relay_sessions", nil); n > 4 { // peers A and B, flooder, honest
		t.Errorf("%v sessions, want the stuck one closed", n)
	}
	t.Logf("the flooder got %d error envelopes (destination queue full)", queueFull.Load())
	if queueFull.Load() == 0 {
		t.Errorf("the stuck session's backlog was not bounded: no queue-full error")
	}
	s.echoWorks(hc)
}
