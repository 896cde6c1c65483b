package hostile

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/test/harness"
)

// Attacks on a peer by a registered twin: what it can make the peer push
// into its service's Redis, and what it can learn from error answers.
// Each test runs a registrar, a relay, a redis-server and peers A (a
// client's) and B (the service's, with the flags under test) as real
// processes, attacks B from a raw twin, and checks the bound and that
// A's client calls to B's echo service keep working.

// newPeerStack is newStack with extra flags for peer B.
func newPeerStack(t *testing.T, peerFlags ...string) *stack {
	t.Helper()
	return newStackWith(t, harness.RelayOptions{}, peerFlags...)
}

// clientCallWorks makes a call from a client of peer A to B's echo
// through Redis, with redisapi.Client, and checks the answer.
func (s *stack) clientCallWorks() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	want := "client-" + newUID()
	out, err := redisapi.NewClient(s.rdbA).Call(ctx, []uint32{s.b.Twin}, "echo", []byte(want), &redisapi.CallOptions{TTL: 20 * time.Second})
	if err != nil || len(out) != 1 || out[0].Error != nil {
		s.t.Fatalf("client call to echo: %+v %v", out, err)
	}
	if p, _ := out[0].Payload(); string(p) != want {
		s.t.Fatalf("client call to echo answered %q, want %q", p, want)
	}
}

// commandKeys lists the msgbus.* keys of rdb other than the peer's own.
func commandKeys(t *testing.T, ctx context.Context, rdb *redis.Client) []string {
	t.Helper()
	keys, err := rdb.Keys(ctx, "msgbus.*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if !strings.HasPrefix(k, "msgbus.system.") {
			out = append(out, k)
		}
	}
	return out
}

// usedMemory is Redis's used_memory.
func usedMemory(t *testing.T, ctx context.Context, rdb *redis.Client) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no used_memory in INFO")
	return 0
}

// inbox reads everything c receives into a channel: waiting on it never
// closes the connection (a WebSocket read whose context ends does).
func (c *client) inbox() <-chan *envelope.Envelope {
	ch := make(chan *envelope.Envelope, 4096)
	go func() {
		defer close(ch)
		for {
			e, err := c.recv(10 * time.Minute)
			if err != nil {
				return
			}
			select {
			case ch <- e:
			default: // the test stopped reading
			}
		}
	}()
	return ch
}

// echoWorksVia is echoWorks for a client whose envelopes are read by
// inbox.
func (s *stack) echoWorksVia(c *client, in <-chan *envelope.Envelope) {
	s.t.Helper()
	e := request(c.tw, s.b.Twin, "echo", []byte("still-alive-"+newUID()), 30)
	c.send(e)
	deadline := time.After(15 * time.Second)
	for {
		select {
		case a := <-in:
			if a.Uid != e.Uid {
				continue
			}
			if !a.IsResponse() {
				s.t.Fatalf("echo after the attack answered %v", a)
			}
			return
		case <-deadline:
			s.t.Fatal("echo after the attack not answered")
		}
	}
}

// TestPeerForgedAnswerOnReplyQueue: a twin names as its command the
// reply queue of one of B's clients (msgbus.reply.<id>, as redisapi.Client
// and `rmb call` name them), or one of the peer's own lists
// (msgbus.system.*), to push a forged answer there. B refuses with 401
// and nothing lands in Redis.
func TestPeerForgedAnswerOnReplyQueue(t *testing.T) {
	t.Parallel()
	s := newPeerStack(t)
	x := s.newTwin()
	c := s.dial(x)
	// A client of B waits on its reply queue.
	victim := "msgbus.reply.5f1c2a7e-9b3d-4c1e-8f2a-7d6e5c4b3a21"
	forged := []byte(`{"ver":1,"ref":"5f1c2a7e-9b3d-4c1e-8f2a-7d6e5c4b3a21","dat":"Zm9yZ2Vk","src":"55","shm":"","now":1,"err":null}`)
	before := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "reserved_command"})
	cmds := []string{strings.TrimPrefix(victim, "msgbus."), "system.local", "system.reply", "system.deadletter", "system.pending"}
	for _, cmd := range cmds {
		e := request(x, s.b.Twin, cmd, forged, 30)
		c.send(e)
		c.expectError(e.Uid, s.b.Twin, envelope.CodeDenied, 15*time.Second)
	}
	if got := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "reserved_command"}) - before; got != float64(len(cmds)) {
		t.Errorf("reserved_command counted %v times, want %d", got, len(cmds))
	}
	for _, q := range []string{victim, redisapi.QueueLocal, redisapi.QueueDeadLetter} {
		if n, _ := s.rdbB.LLen(s.ctx, q).Result(); n != 0 {
			t.Errorf("%s holds %d entries", q, n)
		}
	}
	if n, _ := s.rdbB.HLen(s.ctx, "msgbus.system.pending").Result(); n != 0 {
		t.Errorf("msgbus.system.pending holds %d fields", n)
	}
	s.echoWorks(c)
	s.clientCallWorks()
}

// TestPeerUnservedRequestsPileUp: a twin floods B with large requests
// for commands nobody serves, with a short TTL. The lists are bounded in
// bytes while the attack runs (429 beyond), and at the deadline the
// requests leave Redis: the sender gets 408, each is dead-lettered
// without its payload, and Redis's memory returns to where it was.
func TestPeerUnservedRequestsPileUp(t *testing.T) {
	t.Parallel()
	s := newPeerStack(t, "--command-queue-bytes", "2000000", "--command-bytes", "4000000")
	x := s.newTwin()
	c := s.dial(x)
	in := c.inbox()
	base := usedMemory(t, s.ctx, s.rdbB)
	const n, size, ttl = 120, 100 << 10, 4 // 12 MiB offered
	payload := make([]byte, size)
	uids := map[string]bool{}
	for i := range n {
		e := request(x, s.b.Twin, fmt.Sprintf("nobody.%d", i%4), payload, ttl)
		uids[e.Uid] = true
		c.send(e)
	}
	// During the attack: at most the bound in the lists (base64 makes
	// each request ~137 KiB).
	var peak int64
	counts := map[uint32]int{}
	deadline := time.Now().Add(60 * time.Second)
	for len(uids) > 0 && time.Now().Before(deadline) {
		if m := usedMemory(t, s.ctx, s.rdbB); m > peak {
			peak = m
		}
		select {
		case e := <-in:
			if !uids[e.Uid] {
				continue
			}
			if !e.IsError() || e.GetSource().GetTwin() != s.b.Twin {
				t.Fatalf("answer %v", e)
			}
			counts[e.GetError().GetCode()]++
			delete(uids, e.Uid)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if len(uids) > 0 {
		t.Fatalf("%d of %d requests unanswered after 60s (answers by code: %v)", len(uids), n, counts)
	}
	t.Logf("answers by code: %v; Redis used_memory %d before, peak %d", counts, base, peak)
	if counts[envelope.CodeRateLimited] == 0 || counts[envelope.CodeTimeout] == 0 ||
		counts[envelope.CodeRateLimited]+counts[envelope.CodeTimeout] != n {
		t.Errorf("want 408s and 429s only, got %v", counts)
	}
	if peak-base > 8<<20 {
		t.Errorf("Redis grew by %d bytes during the attack; the bound is 4 MB of lists", peak-base)
	}
	if keys := commandKeys(t, s.ctx, s.rdbB); len(keys) != 0 {
		t.Errorf("command lists left after the deadline: %v", keys)
	}
	dead, err := harness.DeadLetters(s.ctx, s.rdbB)
	if err != nil {
		t.Fatal(err)
	}
	expired := 0
	for _, d := range dead {
		if strings.HasPrefix(d.Queue, "msgbus.nobody.") {
			expired++
			if len(d.Message) > 4096 || d.Code != envelope.CodeTimeout || d.Dst != x.n {
				t.Errorf("dead letter of %d bytes, code %d, dst %d", len(d.Message), d.Code, d.Dst)
			}
		}
	}
	if expired != counts[envelope.CodeTimeout] {
		t.Errorf("%d dead letters for %d expired requests", expired, counts[envelope.CodeTimeout])
	}
	if got := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "unserved_expired"}); got != float64(expired) {
		t.Errorf("unserved_expired counted %v, want %d", got, expired)
	}
	if m := usedMemory(t, s.ctx, s.rdbB); m-base > 2<<20 {
		t.Errorf("Redis holds %d bytes more than before the attack", m-base)
	}
	s.echoWorksVia(c, in)
	s.clientCallWorks()
}

// TestPeerCommandKeySpace: a twin names a new command in every request
// to make B's Redis hold one list per name. At most --command-queues
// lists exist; the rest are refused with 429 at once.
func TestPeerCommandKeySpace(t *testing.T) {
	t.Parallel()
	s := newPeerStack(t, "--command-queues", "20")
	x := s.newTwin()
	c := s.dial(x)
	in := c.inbox()
	// A normal client keeps calling echo through the attack: a command in
	// use keeps its list.
	s.clientCallWorks()
	stop := make(chan struct{})
	calls := make(chan error, 1)
	go func() {
		defer close(calls)
		ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
		defer cancel()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			out, err := redisapi.NewClient(s.rdbA).Call(ctx, []uint32{s.b.Twin}, "echo", []byte("during"), &redisapi.CallOptions{TTL: 20 * time.Second})
			if err == nil && (len(out) != 1 || out[0].Error != nil) {
				err = fmt.Errorf("answer %+v", out)
			}
			if err != nil {
				calls <- err
				return
			}
		}
	}()
	const n = 300
	refused := 0
	for i := range n {
		c.send(request(x, s.b.Twin, fmt.Sprintf("made.up.%d", i), []byte("x"), 60))
	}
	s.waitFor(60*time.Second, func() error {
		for {
			select {
			case e := <-in:
				if !e.IsError() || e.GetError().GetCode() != envelope.CodeRateLimited {
					t.Fatalf("want 429, got %v", e)
				}
				refused++
				continue
			default:
			}
			break
		}
		made := 0
		for _, k := range commandKeys(t, s.ctx, s.rdbB) {
			if strings.HasPrefix(k, "msgbus.made.up.") {
				made++
			}
		}
		if made+refused != n {
			return fmt.Errorf("%d lists, %d refused of %d", made, refused, n)
		}
		return nil
	})
	// The echo service's list counts too, once it is used.
	if keys := commandKeys(t, s.ctx, s.rdbB); len(keys) > 20 {
		t.Errorf("%d command lists, bound 20", len(keys))
	}
	if got := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "command_queues"}); got != float64(refused) {
		t.Errorf("command_queues counted %v, want %d", got, refused)
	}
	close(stop)
	if err := <-calls; err != nil {
		t.Errorf("a client call to echo during the attack: %v", err)
	}
	// A command first used now would find no list free until the
	// made-up ones expire; --serve (next test) keeps made-up names out
	// altogether.
	s.clientCallWorks()
}

// TestPeerServeAllowList: with --serve, requests for other commands are
// answered 404 at once and never reach Redis; the served command works.
func TestPeerServeAllowList(t *testing.T) {
	t.Parallel()
	s := newPeerStack(t, "--serve", "echo,calc.*")
	x := s.newTwin()
	c := s.dial(x)
	for i := range 50 {
		e := request(x, s.b.Twin, fmt.Sprintf("not.served.%d", i), make([]byte, 10<<10), 60)
		c.send(e)
		c.expectError(e.Uid, s.b.Twin, envelope.CodeNotFound, 15*time.Second)
	}
	if keys := commandKeys(t, s.ctx, s.rdbB); len(keys) != 0 {
		t.Errorf("lists of commands not served: %v", keys)
	}
	if got := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "not_served"}); got != 50 {
		t.Errorf("not_served counted %v, want 50", got)
	}
	s.echoWorks(c)
	s.clientCallWorks()
}

// TestPeerAnswerCache: a twin makes B answer many large requests, which
// B keeps for re-sends until their deadline. The cache is bounded
// (--answer-cache-bytes); a re-sent request whose answer was not kept is
// still answered.
func TestPeerAnswerCache(t *testing.T) {
	t.Parallel()
	s := newPeerStack(t, "--answer-cache-bytes", "1000000")
	x := s.newTwin()
	c := s.dial(x)
	in := c.inbox()
	rssBefore, err := s.b.RSS()
	if err != nil {
		t.Fatal(err)
	}
	const n, size = 200, 256 << 10 // 50 MiB of answers
	payload := make([]byte, size)
	var sent []*envelope.Envelope
	answered := 0
	wait := func(want int) {
		t.Helper()
		deadline := time.After(90 * time.Second)
		for answered < want {
			select {
			case e := <-in:
				if !e.IsResponse() {
					t.Fatalf("answer %v", e)
				}
				answered++
			case <-deadline:
				t.Fatalf("%d of %d answered", answered, want)
			}
		}
	}
	for i := range n {
		e := request(x, s.b.Twin, "echo", append([]byte(fmt.Sprint(i, "-")), payload...), 300)
		sent = append(sent, e)
		c.send(e)
		if i%20 == 19 {
			wait(i + 1) // do not outrun the echo service
		}
	}
	wait(n)
	rss, err := s.b.RSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("peer B RSS %d MiB before, %d MiB after %d answers of %d KiB", rssBefore>>20, rss>>20, n, size>>10)
	if rss-rssBefore > 45<<20 {
		t.Errorf("peer B grew by %d MiB holding answers; the cache bound is 1 MB", (rss-rssBefore)>>20)
	}
	if got := s.peerMetric(s.b, "rmb_peer_dropped_total", map[string]string{"reason": "answer_cache_full"}); got == 0 {
		t.Error("answer_cache_full not counted")
	}
	// The last request's answer did not fit: re-sent, it is answered.
	served := s.echo.Served()
	c.send(sent[n-1])
	select {
	case e := <-in:
		if e.Uid != sent[n-1].Uid || !e.IsResponse() {
			t.Fatalf("re-sent request answered %v", e)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("re-sent request not answered")
	}
	t.Logf("the re-sent request was served again: %v", s.echo.Served() > served)
	s.clientCallWorks()
}

// TestPeerSecretsNotLeaked: B's Redis has a password and goes away. The
// password is in no log line, and an attacker's request, which B cannot
// queue, gets an error answer that names neither Redis nor its address.
func TestPeerSecretsNotLeaked(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := harness.NewCluster(t.TempDir(), bins)
	defer c.Close()
	reg, err := c.StartRegistrar(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := c.StartRelay(ctx, reg, harness.RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := c.Redis(false)
	if err != nil {
		t.Fatal(err)
	}
	const pw = "Pa55-w0rd-for-the-test"
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	if err := rdb.ConfigSet(ctx, "requirepass", pw).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.Close()
	b, err := c.StartPeer(ctx, "peerB", reg, "redis://:"+pw+"@"+rs.Addr+"/2", rl)
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Logs(30))
	}
	s := &stack{t: t, ctx: ctx, c: c, reg: reg, relay: rl, b: b}
	x := s.newTwin()
	cl := s.dial(x)
	rs.Kill()
	e := request(x, b.Twin, "echo", []byte("x"), 3)
	cl.send(e)
	a := cl.expectAnswer(e.Uid, 30*time.Second)
	msg := a.GetError().GetMessage()
	_, port, _ := strings.Cut(rs.Addr, ":")
	if !a.IsError() || strings.Contains(msg, port) || strings.Contains(strings.ToLower(msg), "redis") || strings.Contains(msg, pw) {
		t.Errorf("error answer to a remote twin: %v", a)
	}
	t.Logf("error answer: %d %q", a.GetError().GetCode(), msg)
	if logs := b.Tail(1000); strings.Contains(logs, pw) {
		t.Errorf("the Redis password is in peer B's log")
	}
}
