package peer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/e2e"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/relay"
)

func twinString(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func errCode(t testing.TB, m map[string]any) int {
	t.Helper()
	e, ok := m["err"].(map[string]any)
	if !ok {
		return 0
	}
	return int(e["code"].(float64))
}

func TestCallAndResponse(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	serve(t, b.rdb, "calc.add", func(in string) (string, error) {
		var xs []int
		if err := json.Unmarshal([]byte(in), &xs); err != nil {
			return "", err
		}
		sum := 0
		for _, x := range xs {
			sum += x
		}
		return strconv.Itoa(sum), nil
	})
	pushRequest(t, a.rdb, request("calc.add", "[1,2]", "ret1", 30, b.Twin()))
	m := popJSON(t, a.rdb, "ret1", 10*time.Second)
	if m["ref"] != "ref-ret1" || m["src"] != twinString(b.Twin()) || unb64(t, m["dat"]) != "3" || m["err"] != nil {
		t.Fatalf("bad response %v", m)
	}
	if m["ver"].(float64) != 1 || m["shm"] != "text/plain" {
		t.Fatalf("bad response %v", m)
	}
	// Encryption to b kept b's shared key, and the cache says so.
	if n := metricValue(t, a.Registry(), "rmb_peer_e2e_keys", nil); n < 1 {
		t.Fatalf("rmb_peer_e2e_keys = %v after an encrypted call, want at least 1", n)
	}
	// The processing list is empty once the request went out.
	waitFor(t, 20*time.Second, func() error {
		if n := a.rdb.LLen(context.Background(), peer.LocalProcessing).Val(); n != 0 {
			return fmt.Errorf("%d left in processing", n)
		}
		return nil
	})
}

func TestIncomingRequestJSON(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	req := request("svc.look", "hello", "ret", 60, b.Twin())
	req["tag"] = "t1"
	pushRequest(t, a.rdb, req)
	in := popJSON(t, b.rdb, "msgbus.svc.look", 10*time.Second)
	if in["src"] != twinString(a.Twin()) || in["cmd"] != "svc.look" || in["ret"] != "msgbus.system.reply" ||
		unb64(t, in["dat"]) != "hello" || in["shm"] != "application/json" || in["tag"] != "t1" ||
		in["exp"].(float64) != 60 || in["ver"].(float64) != 1 {
		t.Fatalf("bad incoming request %v", in)
	}
	if ref, _ := in["ref"].(string); len(ref) != 36 {
		t.Fatalf("ref %q is not the envelope uid", in["ref"])
	}
	if now := in["now"].(float64); time.Since(time.Unix(int64(now), 0)) > time.Minute {
		t.Fatalf("bad now %v", now)
	}
}

func TestMultiDestination(t *testing.T) {
	s := newStack(t, 1)
	a, b, c := s.newPeer(), s.newPeer(), s.newPeer()
	serve(t, b.rdb, "who", func(string) (string, error) { return "b", nil })
	serve(t, c.rdb, "who", func(string) (string, error) { return "c", nil })
	pushRequest(t, a.rdb, request("who", "", "ret", 30, b.Twin(), c.Twin()))
	got := map[string]string{}
	for range 2 {
		m := popJSON(t, a.rdb, "ret", 10*time.Second)
		got[m["src"].(string)] = unb64(t, m["dat"])
	}
	want := map[string]string{twinString(b.Twin()): "b", twinString(c.Twin()): "c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestServiceError(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	serve(t, b.rdb, "fail", func(string) (string, error) { return "", errors.New("division by zero") })
	pushRequest(t, a.rdb, request("fail", "", "ret", 30, b.Twin()))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	e, _ := m["err"].(map[string]any)
	if e == nil || e["code"].(float64) != 42 || e["message"] != "division by zero" || m["src"] != twinString(b.Twin()) {
		t.Fatalf("bad error response %v", m)
	}
}

func TestUnknownCommandTimesOut(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	start := time.Now()
	pushRequest(t, a.rdb, request("nobody.home", "", "ret", 2, b.Twin()))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if errCode(t, m) != envelope.CodeTimeout || m["src"] != twinString(b.Twin()) || m["ref"] != "ref-ret" {
		t.Fatalf("want a timeout error, got %v", m)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("timed out after %v, before the TTL", d)
	}
}

func TestVersion(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer(func(o *peer.Options) { o.Version = "test-9.9" })
	pushRequest(t, a.rdb, request("rmb.version", "", "ret", 30, b.Twin()))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if unb64(t, m["dat"]) != `"test-9.9"` || m["err"] != nil {
		t.Fatalf("bad version answer %v", m)
	}
}

func TestE2EOnTheWire(t *testing.T) {
	for _, withKey := range []bool{true, false} {
		t.Run(fmt.Sprintf("e2e=%v", withKey), func(t *testing.T) {
			s := newStack(t, 1)
			a := s.newPeer()
			raw := s.newRawTwin(withKey, 0)
			pushRequest(t, a.rdb, request("secret.cmd", "top secret", "ret", 30, raw.twin))
			env := raw.recv(10 * time.Second)
			if env.GetRequest().GetCommand() != "secret.cmd" || env.Source.GetTwin() != a.Twin() {
				t.Fatalf("unexpected envelope %v", env)
			}
			if err := env.Verify(a.id.PublicKey()); err != nil {
				t.Fatalf("request not signed by the peer: %v", err)
			}
			cache := e2e.NewCache(raw.id.E2EPrivateKey(), 0)
			var got []byte
			switch p := env.Payload.(type) {
			case *envelope.Envelope_Cipher:
				if !withKey {
					t.Fatal("cipher sent to a twin without e2e key")
				}
				var err error
				if got, err = cache.Open(a.id.E2EPublicKey(), p.Cipher); err != nil {
					t.Fatal(err)
				}
			case *envelope.Envelope_Plain:
				if withKey {
					t.Fatal("plain payload sent to a twin with an e2e key")
				}
				got = p.Plain
			}
			if string(got) != "top secret" {
				t.Fatalf("payload %q", got)
			}
			// Answer, encrypted when the raw twin has a key.
			resp := envelope.NewResponse(env.Uid, nil, 30)
			resp.Source = envelope.NewAddress(raw.twin, "")
			resp.Destination = env.Source
			resp.Payload = &envelope.Envelope_Plain{Plain: []byte("ack")}
			if withKey {
				sealed, err := cache.Seal(a.id.E2EPublicKey(), []byte("ack"))
				if err != nil {
					t.Fatal(err)
				}
				resp.Payload = &envelope.Envelope_Cipher{Cipher: sealed}
			}
			resp.Stamp(time.Now())
			resp.Sign(raw.id)
			raw.send(resp)
			m := popJSON(t, a.rdb, "ret", 10*time.Second)
			if unb64(t, m["dat"]) != "ack" || m["src"] != twinString(raw.twin) {
				t.Fatalf("bad response %v", m)
			}
		})
	}
}

func TestRejectsBadRequests(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	raw := s.newRawTwin(false, 0)
	check := func(env *envelope.Envelope, code uint32) {
		t.Helper()
		raw.send(env)
		got := raw.recv(10 * time.Second)
		if got.Uid != env.Uid || got.GetError().GetCode() != code {
			t.Fatalf("want error %d for %s, got %v", code, env.Uid, got)
		}
		if err := got.Verify(b.id.PublicKey()); err != nil {
			t.Fatalf("error answer not signed by the peer: %v", err)
		}
	}
	bad := raw.request("bad-sig", "x", []byte("p"), b.Twin())
	bad.Signature[10] ^= 0xff
	check(bad, envelope.CodeBadSignature)

	// (Expired envelopes never get here: the relay drops them. The 102
	// path is covered by TestExpiredRequestAnswered.)

	cipher := raw.request("cipher", "x", nil, b.Twin())
	cipher.Payload = &envelope.Envelope_Cipher{Cipher: make([]byte, 40)}
	cipher.Sign(raw.id)
	check(cipher, envelope.CodeNoE2EKey) // raw twin has no e2e key

	// The first envelope of a twin goes to an inbound worker, which looks
	// the twin up; from then on the connection's reader handles the
	// twin's envelopes itself. Both answer errors.
	bad = raw.request("bad-sig-cached", "x", []byte("p"), b.Twin())
	bad.Signature[10] ^= 0xff
	check(bad, envelope.CodeBadSignature)
}

// TestExpiredRequestAnswered uses a relay whose clock is late, so it
// forwards an envelope the peer sees as expired.
func TestExpiredRequestAnswered(t *testing.T) {
	s := newStack(t, 0)
	s.relays = append(s.relays, s.startRelay(func(o *relay.Options) {
		o.Now = func() time.Time { return time.Now().Add(-100 * time.Second) }
		o.TokenPolicy = identity.TokenPolicy{ClockSkew: 200 * time.Second}
	}))
	b := s.newPeer()
	raw := s.newRawTwin(false, 0)
	env := envelope.NewRequest("old", "x", nil, 10)
	env.Source = envelope.NewAddress(raw.twin, "")
	env.Destination = envelope.NewAddress(b.Twin(), "")
	env.Timestamp = uint64(time.Now().Unix() - 50)
	env.Sign(raw.id)
	raw.send(env)
	got := raw.recv(10 * time.Second)
	if got.Uid != "old" || got.GetError().GetCode() != envelope.CodeExpired {
		t.Fatalf("want 102, got %v", got)
	}
}

func TestDecryptFailure(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	raw := s.newRawTwin(true, 0)
	env := raw.request("garbled", "x", nil, b.Twin())
	env.Payload = &envelope.Envelope_Cipher{Cipher: make([]byte, 40)}
	env.Sign(raw.id)
	raw.send(env)
	got := raw.recv(10 * time.Second)
	if got.GetError().GetCode() != envelope.CodeDecryptFailed {
		t.Fatalf("want 106, got %v", got)
	}
}

func TestDuplicateSuppressed(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	raw := s.newRawTwin(false, 0)
	env := raw.request("dup-1", "dup.cmd", []byte("once"), b.Twin())
	raw.send(env)
	raw.send(env)
	in := popJSON(t, b.rdb, "msgbus.dup.cmd", 10*time.Second)
	if in["ref"] != "dup-1" {
		t.Fatalf("bad request %v", in)
	}
	// Answer; then the same request again gets the same answer from the
	// peer's cache, and the service never sees it twice.
	reply, _ := json.Marshal(map[string]any{"ver": 1, "ref": "dup-1", "dst": in["src"], "dat": b64("r"), "shm": "", "now": 0})
	b.rdb.LPush(context.Background(), "msgbus.system.reply", reply)
	first := raw.recv(10 * time.Second)
	raw.send(env)
	second := raw.recv(10 * time.Second)
	if !first.IsResponse() || !second.IsResponse() || string(first.GetPlain()) != "r" || string(second.GetPlain()) != "r" {
		t.Fatalf("bad answers %v / %v", first, second)
	}
	if n := b.rdb.LLen(context.Background(), "msgbus.dup.cmd").Val(); n != 0 {
		t.Fatalf("service queue got %d duplicates", n)
	}
}

func TestPolicyDenial(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	pol, err := peer.ParsePolicy([]byte(fmt.Sprintf("default: allow\nrules:\n  - commands: [\"calc.*\"]\n    deny: [%d]\n", a.Twin())))
	if err != nil {
		t.Fatal(err)
	}
	b := s.newPeer(func(o *peer.Options) { o.Policy = pol })
	serve(t, b.rdb, "calc.add", echo)
	pushRequest(t, a.rdb, request("calc.add", "1", "ret", 30, b.Twin()))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if errCode(t, m) != envelope.CodeDenied {
		t.Fatalf("want denial, got %v", m)
	}
	b.ReloadPolicy(nil)
	pushRequest(t, a.rdb, request("calc.add", "1", "ret", 30, b.Twin()))
	m = popJSON(t, a.rdb, "ret", 10*time.Second)
	if errCode(t, m) != 0 || unb64(t, m["dat"]) != "echo:1" {
		t.Fatalf("want an answer after reload, got %v", m)
	}
}

func TestGarbageDeadLettered(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	ctx := context.Background()
	a.rdb.LPush(ctx, peer.LocalQueue, "this is not json")
	a.rdb.LPush(ctx, peer.ReplyQueue, `{"ref":`)
	// Valid JSON, bad content but with a ret: dead-lettered and answered.
	a.rdb.LPush(ctx, peer.LocalQueue, `{"ver":1,"cmd":"x","dat":"!!!","dst":[5],"ret":"badret"}`)
	var letters []peer.DeadLetter
	waitFor(t, 20*time.Second, func() error {
		letters = letters[:0]
		for _, s := range a.rdb.LRange(ctx, peer.DeadLetterQueue, 0, -1).Val() {
			var d peer.DeadLetter
			if err := json.Unmarshal([]byte(s), &d); err != nil {
				return err
			}
			letters = append(letters, d)
		}
		if len(letters) != 3 {
			return fmt.Errorf("%d dead letters", len(letters))
		}
		return nil
	})
	found := map[string]bool{}
	for _, d := range letters {
		found[d.Message] = true
		if d.Reason == "" || d.Time.IsZero() || d.Queue == "" {
			t.Fatalf("incomplete dead letter %+v", d)
		}
	}
	if !found["this is not json"] || !found[`{"ref":`] {
		t.Fatalf("dead letters %+v", letters)
	}
	if m := popJSON(t, a.rdb, "badret", 5*time.Second); errCode(t, m) != envelope.CodeBadPayload {
		t.Fatalf("want 101 on ret, got %v", m)
	}
	// The peer keeps working.
	serve(t, b.rdb, "ok", echo)
	pushRequest(t, a.rdb, request("ok", "still", "ret", 30, b.Twin()))
	if m := popJSON(t, a.rdb, "ret", 10*time.Second); unb64(t, m["dat"]) != "echo:still" {
		t.Fatalf("bad answer %v", m)
	}
}

func TestUnknownDestinationDeadLettered(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	pushRequest(t, a.rdb, request("x", "", "ret", 30, 999999))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if errCode(t, m) != envelope.CodeUnknownTwin || m["src"] != "999999" {
		t.Fatalf("want 103, got %v", m)
	}
	if n := a.rdb.LLen(context.Background(), peer.DeadLetterQueue).Val(); n != 1 {
		t.Fatalf("%d dead letters, want 1", n)
	}
}

func TestUndeliverableBeforeTTL(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	s.relays[0].kill()
	waitFor(t, 20*time.Second, func() error {
		if a.Connected() != 0 {
			return errors.New("still connected")
		}
		return nil
	})
	pushRequest(t, a.rdb, request("x", "", "ret", 2, b.Twin()))
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if c := errCode(t, m); c != envelope.CodeUndeliverable {
		t.Fatalf("want 504, got %v", m)
	}
	var d peer.DeadLetter
	waitFor(t, 20*time.Second, func() error {
		s, err := a.rdb.LIndex(context.Background(), peer.DeadLetterQueue, 0).Result()
		if err != nil {
			return err
		}
		return json.Unmarshal([]byte(s), &d)
	})
	if d.Dst != b.Twin() || d.Queue != peer.LocalQueue || !strings.Contains(d.Message, `"cmd":"x"`) {
		t.Fatalf("bad dead letter %+v", d)
	}
	waitFor(t, 20*time.Second, func() error {
		if n := a.rdb.LLen(context.Background(), peer.LocalProcessing).Val(); n != 0 {
			return fmt.Errorf("%d left in processing", n)
		}
		return nil
	})
}

func TestBoundedServiceQueue(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer()
	b := s.newPeer(func(o *peer.Options) { o.QueueLimit = 2 })
	for i := range 3 {
		pushRequest(t, a.rdb, request("slow", strconv.Itoa(i), "ret", 30, b.Twin()))
	}
	m := popJSON(t, a.rdb, "ret", 10*time.Second)
	if errCode(t, m) != envelope.CodeRateLimited {
		t.Fatalf("want 429 for the third request, got %v", m)
	}
	if n := b.rdb.LLen(context.Background(), "msgbus.slow").Val(); n != 2 {
		t.Fatalf("service queue holds %d, want 2 (never trimmed)", n)
	}
}

// TestAnswerToFullRetQueue: an answer whose ret queue is at the bound is
// dead-lettered, not dropped, and its pending entry is still removed.
func TestAnswerToFullRetQueue(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer(func(o *peer.Options) { o.QueueLimit = 1 })
	b := s.newPeer()
	serve(t, b.rdb, "echo", echo)
	ctx := context.Background()
	a.rdb.LPush(ctx, "full", "already here")
	pushRequest(t, a.rdb, request("echo", "r1", "full", 30, b.Twin()))
	var d peer.DeadLetter
	waitFor(t, 10*time.Second, func() error {
		s, err := a.rdb.LIndex(ctx, peer.DeadLetterQueue, 0).Result()
		if err != nil {
			return err
		}
		return json.Unmarshal([]byte(s), &d)
	})
	if d.Queue != "full" || d.Ref != "ref-full" || !strings.Contains(d.Reason, "queue is full") || !strings.Contains(d.Message, `"ref":"ref-full"`) {
		t.Fatalf("bad dead letter %+v", d)
	}
	if got := a.rdb.LRange(ctx, "full", 0, -1).Val(); len(got) != 1 || got[0] != "already here" {
		t.Fatalf("ret queue holds %q, want only what was there", got)
	}
	waitFor(t, 20*time.Second, func() error {
		if n := a.rdb.HLen(ctx, peer.PendingHash).Val(); n != 0 {
			return fmt.Errorf("%d pending entries left", n)
		}
		return nil
	})
}

func TestRequestsSurviveRestart(t *testing.T) {
	s := newStack(t, 1)
	b := s.newPeer()
	serve(t, b.rdb, "echo", echo)
	id := newIdentity(t)
	const db = 15
	rdb := redis.NewClient(&redis.Options{Addr: s.redis.Addr, DB: db})
	defer rdb.Close()
	// Queued while the peer is down, and one left in processing by a
	// crashed run.
	a := s.startPeer(id, db)
	a.stop()
	for i := range 5 {
		pushRequest(t, rdb, request("echo", strconv.Itoa(i), "ret", 60, b.Twin()))
	}
	left, _ := json.Marshal(request("echo", "left", "ret", 60, b.Twin()))
	rdb.LPush(context.Background(), peer.LocalProcessing, left)
	a = s.startPeer(id, db)
	got := map[string]bool{}
	for range 6 {
		m := popJSON(t, rdb, "ret", 10*time.Second)
		got[unb64(t, m["dat"])] = true
	}
	for _, w := range []string{"echo:0", "echo:1", "echo:2", "echo:3", "echo:4", "echo:left"} {
		if !got[w] {
			t.Fatalf("missing %s in %v", w, got)
		}
	}
}

func TestRelayFailoverNoLoss(t *testing.T) {
	s := newStack(t, 2)
	a, b := s.newPeer(), s.newPeer()
	serve(t, b.rdb, "echo", echo)
	const n = 200
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			pushRequest(t, a.rdb, request("echo", strconv.Itoa(i), "ret", 60, b.Twin()))
			if i == n/3 {
				s.relays[0].kill()
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	got := map[string]bool{}
	for len(got) < n {
		m := popJSON(t, a.rdb, "ret", 30*time.Second)
		if errCode(t, m) != 0 {
			t.Fatalf("error response %v", m)
		}
		got[unb64(t, m["dat"])] = true
	}
	wg.Wait()
	if a.Connected() != 1 {
		t.Fatalf("%d relays connected, want 1", a.Connected())
	}
}

func TestInProcessCall(t *testing.T) {
	s := newStack(t, 1)
	noRedis := func(o *peer.Options) { o.Redis = nil }
	a, b := s.newPeer(noRedis), s.newPeer(noRedis)
	b.Handle("calc.double", func(ctx context.Context, r *peer.Request) ([]byte, error) {
		if r.Source != a.Twin() {
			return nil, &peer.Error{Code: 401, Message: "who are you"}
		}
		n, err := strconv.Atoi(string(r.Data))
		if err != nil {
			return nil, err
		}
		return []byte(strconv.Itoa(2 * n)), nil
	})
	ctx := context.Background()
	rs, err := a.Call(ctx, []uint32{b.Twin()}, "calc.double", []byte("21"), nil)
	if err != nil || len(rs) != 1 || rs[0].Err != nil || string(rs[0].Data) != "42" || rs[0].Source != b.Twin() {
		t.Fatalf("call: %v %+v", err, rs)
	}
	rs, _ = a.Call(ctx, []uint32{b.Twin()}, "calc.double", []byte("x"), nil)
	if rs[0].Err == nil || rs[0].Err.Code != envelope.CodeInternal {
		t.Fatalf("want 500, got %+v", rs)
	}
	rs, _ = a.Call(ctx, []uint32{b.Twin()}, "no.such", nil, nil)
	if rs[0].Err == nil || rs[0].Err.Code != envelope.CodeNotFound {
		t.Fatalf("want 404, got %+v", rs)
	}
	rs, _ = a.Call(ctx, []uint32{b.Twin()}, "rmb.version", nil, nil)
	if rs[0].Err != nil || string(rs[0].Data) != `"`+peer.Version+`"` {
		t.Fatalf("version: %+v", rs)
	}
}

// Peers reach a relay over wss:// with the TLS settings of
// Options.Transport (here trusting the test relay's certificate), and one
// that does not trust it never connects.
func TestRelayOverTLS(t *testing.T) {
	s := newStack(t, 0)
	tr := s.startRelayOn(true)
	trusting := func(o *peer.Options) {
		o.Relays = []string{tr.url}
		o.Transport = tr.srv.Client().Transport.(*http.Transport)
	}
	a, b := s.newPeer(trusting), s.newPeer(trusting)
	b.Handle("tls.echo", func(_ context.Context, r *peer.Request) ([]byte, error) { return r.Data, nil })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := a.Call(ctx, []uint32{b.Twin()}, "tls.echo", []byte("over wss"), nil)
	if err != nil || len(rs) != 1 || rs[0].Err != nil || string(rs[0].Data) != "over wss" {
		t.Fatalf("call over wss: %v %+v", err, rs)
	}

	// Without the test CA the handshake fails, and keeps failing.
	p, err := peer.New(&peer.Options{Identity: newIdentity(t), Relays: []string{tr.url}, Registrar: s.client(),
		Logger: testLogger(t), MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	<-p.Ready()
	time.Sleep(300 * time.Millisecond)
	if n := p.Connected(); n != 0 {
		t.Errorf("a peer that does not trust the relay's certificate connected (%d)", n)
	}
	pcancel()
	<-done
}
