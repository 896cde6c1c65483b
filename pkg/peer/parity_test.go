package peer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

// Parity with the Rust peer's Redis JSON (issue 15): a destination listed
// twice is sent and answered twice, and an absent ref or shm is null.

// popRaw pops one message from queue within d, as its bytes.
func popRaw(t testing.TB, p *testPeer, queue string, d time.Duration) string {
	t.Helper()
	res, err := p.rdb.BRPop(context.Background(), d, queue).Result()
	if err != nil {
		t.Fatalf("nothing on %s within %v: %v", queue, d, err)
	}
	return res[1]
}

// popAnswers pops n answers from ret and returns them decoded.
func popAnswers(t testing.TB, p *testPeer, ret string, n int) []map[string]any {
	t.Helper()
	var out []map[string]any
	for range n {
		out = append(out, popJSON(t, p.rdb, ret, 20*time.Second))
	}
	return out
}

// sources counts the answers per src.
func sources(answers []map[string]any) map[string]int {
	n := map[string]int{}
	for _, m := range answers {
		n[fmt.Sprint(m["src"])]++
	}
	return n
}

// waitEmpty waits until the request left nothing behind: no message in
// processing, no persisted destination.
func waitEmpty(t testing.TB, p *testPeer) {
	t.Helper()
	ctx := context.Background()
	waitFor(t, 20*time.Second, func() error {
		if n := p.rdb.LLen(ctx, peer.LocalProcessing).Val(); n != 0 {
			return fmt.Errorf("%d left in processing", n)
		}
		if n := p.rdb.HLen(ctx, peer.PendingHash).Val(); n != 0 {
			return fmt.Errorf("%d destinations still pending", n)
		}
		return nil
	})
}

func TestDuplicateDestinationsAnsweredEach(t *testing.T) {
	s := newStack(t, 1)
	a, b, c := s.newPeer(), s.newPeer(), s.newPeer()
	var mu sync.Mutex
	var uids []string
	serveCounting := func(p *testPeer, name string) {
		serve(t, p.rdb, "who", func(string) (string, error) { return name, nil })
	}
	serveCounting(c, "c")
	// b's service notes the uid of each request it gets.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			res, err := b.rdb.BRPop(ctx, time.Second, "msgbus.who").Result()
			if err != nil {
				continue
			}
			var in map[string]any
			json.Unmarshal([]byte(res[1]), &in)
			mu.Lock()
			uids = append(uids, fmt.Sprint(in["ref"]))
			mu.Unlock()
			out, _ := json.Marshal(map[string]any{"ver": 1, "ref": in["ref"], "dst": in["src"], "dat": b64("b"), "now": time.Now().Unix()})
			b.rdb.LPush(ctx, peer.ReplyQueue, out)
		}
	}()

	bs, cs := twinString(b.Twin()), twinString(c.Twin())
	pushRequest(t, a.rdb, request("who", "", "ret", 30, b.Twin(), c.Twin(), b.Twin(), b.Twin()))
	answers := popAnswers(t, a, "ret", 4)
	if got := sources(answers); got[bs] != 3 || got[cs] != 1 {
		t.Fatalf("answers by source %v, want 3 from %s and 1 from %s", got, bs, cs)
	}
	for _, m := range answers {
		if m["ref"] != "ref-ret" || m["err"] != nil {
			t.Fatalf("bad answer %v", m)
		}
	}
	mu.Lock()
	got := slices.Clone(uids)
	mu.Unlock()
	slices.Sort(got)
	if len(got) != 3 || len(slices.Compact(got)) != 3 {
		t.Fatalf("b's service got requests %v, want 3 with distinct uids", uids)
	}
	waitEmpty(t, a)
	if m, err := a.rdb.BRPop(context.Background(), 500*time.Millisecond, "ret").Result(); err == nil {
		t.Fatalf("a fifth answer: %v", m)
	}
}

func TestDuplicateDestinationsTimeOutEach(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	pushRequest(t, a.rdb, request("nobody.home", "", "ret", 2, b.Twin(), b.Twin()))
	for _, m := range popAnswers(t, a, "ret", 2) {
		if errCode(t, m) != envelope.CodeTimeout || m["src"] != twinString(b.Twin()) {
			t.Fatalf("want a timeout from %d, got %v", b.Twin(), m)
		}
	}
	waitEmpty(t, a)
}

func TestDuplicateDestinationsDeadLetteredEach(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	pushRequest(t, a.rdb, request("x", "", "ret", 30, 999999, 999999))
	for _, m := range popAnswers(t, a, "ret", 2) {
		if errCode(t, m) != envelope.CodeUnknownTwin || m["src"] != "999999" {
			t.Fatalf("want 103, got %v", m)
		}
	}
	var letters []peer.DeadLetter
	waitFor(t, 20*time.Second, func() error {
		letters = letters[:0]
		for _, s := range a.rdb.LRange(context.Background(), peer.DeadLetterQueue, 0, -1).Val() {
			var d peer.DeadLetter
			if err := json.Unmarshal([]byte(s), &d); err != nil {
				return err
			}
			letters = append(letters, d)
		}
		if len(letters) != 2 {
			return fmt.Errorf("%d dead letters, want 2", len(letters))
		}
		return nil
	})
	if letters[0].UID == letters[1].UID || letters[0].Dst != 999999 || letters[1].Dst != 999999 {
		t.Fatalf("dead letters %+v, want one per copy", letters)
	}
}

// A request refused before it is sent is answered once per listed
// destination too, but a list over the bound gets one answer, not one per
// entry.
func TestDuplicateDestinationsRefused(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	bad := request("x", "", "ret", 30, 7, 7, 7)
	bad["dat"] = "!!!"
	pushRequest(t, a.rdb, bad)
	for _, m := range popAnswers(t, a, "ret", 3) {
		if errCode(t, m) != envelope.CodeBadPayload || m["src"] != "7" {
			t.Fatalf("want 101 from 7, got %v", m)
		}
	}
	many := make([]uint32, peer.MaxDestinations+1)
	for i := range many {
		many[i] = 7
	}
	pushRequest(t, a.rdb, request("x", "", "ret2", 30, many...))
	if m := popJSON(t, a.rdb, "ret2", 20*time.Second); errCode(t, m) != envelope.CodeBadPayload || m["src"] != "0" ||
		!strings.Contains(fmt.Sprint(m["err"]), "at most") {
		t.Fatalf("want one 101 naming the bound, got %v", m)
	}
	waitEmpty(t, a)
	if n := a.rdb.LLen(context.Background(), "ret2").Val(); n != 0 {
		t.Fatalf("%d more answers to a request over the bound", n)
	}
}

// TestAbsentRefAndSchemaAreNull: a request without ref or shm reaches
// the service with "shm":null and its answer reaches the caller with
// "ref":null and "shm":null, the bytes the Rust peer writes.
func TestAbsentRefAndSchemaAreNull(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	req := request("svc.look", "hi", "ret", 30, b.Twin())
	delete(req, "ref")
	delete(req, "shm")
	pushRequest(t, a.rdb, req)
	in := popRaw(t, b, "msgbus.svc.look", 20*time.Second)
	if !strings.Contains(in, `,"shm":null,`) || !strings.Contains(in, `,"tag":null,`) {
		t.Fatalf("incoming request %s: want shm and tag null", in)
	}
	var m map[string]any
	json.Unmarshal([]byte(in), &m)
	out, _ := json.Marshal(map[string]any{"ver": 1, "ref": m["ref"], "dst": m["src"], "dat": b64("ok"), "now": 0})
	b.rdb.LPush(context.Background(), peer.ReplyQueue, out)
	ans := popRaw(t, a, "ret", 20*time.Second)
	want := fmt.Sprintf(`{"ver":1,"ref":null,"dat":%q,"src":"%d","shm":null,"now":`, b64("ok"), b.Twin())
	if !strings.HasPrefix(ans, want) || !strings.HasSuffix(ans, `,"err":null}`) {
		t.Fatalf("answer %s, want %s...,\"err\":null}", ans, want)
	}
}

// TestPythonTesterDuplicateDestinations runs the counting of the Rust
// repository's tools/rmb_tester (expected answers = len(dst) per
// message, its message shape: ref "", no tag) against our peers, with a
// destination listed twice: nothing may be counted missing.
func TestPythonTesterDuplicateDestinations(t *testing.T) {
	py := python(t)
	s := newStack(t, 1)
	a, b, c := s.newPeer(), s.newPeer(), s.newPeer()
	serve(t, b.rdb, "testme", echo)
	serve(t, c.rdb, "testme", echo)
	const script = `
import base64, json, sys, time, uuid, redis
r = redis.Redis.from_url(sys.argv[1])
dst = [int(d) for d in sys.argv[2:]]
rets, expected = [], 0
for _ in range(5):
    ret = str(uuid.uuid4())
    r.lpush("msgbus.system.local", json.dumps({"ver": 1, "ref": "", "cmd": "testme", "exp": 60,
        "dat": base64.b64encode(b"hello").decode(), "dst": dst, "ret": ret,
        "shm": "application/json", "now": int(time.time())}))
    rets.append(ret)
    expected += len(dst)
ok = errors = 0
deadline = time.time() + 40
while ok + errors < expected and time.time() < deadline:
    item = r.blpop(rets, timeout=max(1, int(deadline - time.time())))
    if item is None:
        break
    msg = json.loads(item[1])
    if msg.get("err") is None:
        ok += 1
    else:
        errors += 1
print("expected %d success %d errors %d missing %d" % (expected, ok, errors, expected - ok - errors))
`
	url := fmt.Sprintf("redis://%s/%d", s.redis.Addr, a.opts.Redis.Options().DB)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c", script, url,
		twinString(b.Twin()), twinString(c.Twin()), twinString(b.Twin())).CombinedOutput()
	if err != nil {
		t.Fatalf("tester: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "expected 15 success 15 errors 0 missing 0" {
		t.Fatalf("tester: %s", got)
	}
}
