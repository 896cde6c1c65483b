package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// rmbBin is the rmb binary built once for the tests in this package.
var rmbBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rmb-cli-test-")
	if err != nil {
		panic(err)
	}
	rmbBin = filepath.Join(dir, "rmb")
	// The demo runs the other binaries from the same directory.
	for out, pkg := range map[string]string{
		"rmb": ".", "rmb-registrar": "../registrar", "rmb-relay": "../relay", "rmb-peer": "../peer",
	} {
		if b, err := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg).CombinedOutput(); err != nil {
			os.Stderr.Write(b)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// rmb runs the built binary with args and an optional environment.
func rmb(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, rmbBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run rmb %v: %v", args, err)
	}
	return result{code, out.String(), errb.String()}
}

func TestUsageAndHelp(t *testing.T) {
	if r := rmb(t, nil); r.code != 2 || !strings.Contains(r.stderr, "commands:") {
		t.Errorf("no args: %+v", r)
	}
	if r := rmb(t, nil, "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %+v", r)
	}
	for _, c := range []string{"keygen", "register", "whois", "call", "serve", "demo", "deadletter"} {
		r := rmb(t, nil, c, "--help")
		if r.code != 0 || !strings.Contains(r.stderr, "usage: rmb "+c) {
			t.Errorf("%s --help: %+v", c, r)
		}
	}
	for _, v := range []string{"--version", "version"} {
		if r := rmb(t, nil, v); r.code != 0 || !strings.HasPrefix(r.stdout, "rmb ") || !strings.Contains(r.stdout, runtime.Version()) {
			t.Errorf("rmb %s: %+v", v, r)
		}
	}
	// $RMB_REDIS and $RMB_REGISTRAR stand in for --redis and --registrar.
	if r := rmb(t, []string{"RMB_REDIS=redis://127.0.0.1:1"}, "deadletter", "list"); r.code != 1 || !strings.Contains(r.stderr, "redis://127.0.0.1:1") {
		t.Errorf("RMB_REDIS: %+v", r)
	}
	if r := rmb(t, []string{"RMB_REGISTRAR=http://127.0.0.1:1"}, "whois", "5"); r.code != 1 || !strings.Contains(r.stderr, "http://127.0.0.1:1") {
		t.Errorf("RMB_REGISTRAR: %+v", r)
	}
	if r := rmb(t, nil, "keygen", "--no-such-flag"); r.code != 2 {
		t.Errorf("bad flag: %+v", r)
	}
}

func TestKeygen(t *testing.T) {
	for _, kt := range []string{"sr25519", "ed25519"} {
		r := rmb(t, nil, "keygen", "--key-type", kt, "--json")
		if r.code != 0 {
			t.Fatalf("keygen: %+v", r)
		}
		var k keysOut
		if err := json.Unmarshal([]byte(r.stdout), &k); err != nil {
			t.Fatalf("keygen --json printed %q: %v", r.stdout, err)
		}
		id, err := identity.FromSecret(k.Mnemonic, identity.KeyType(kt))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.ToLower(k.PublicKey); got != hexs(id.PublicKey()) || k.E2EKey != hexs(id.E2EPublicKey()) {
			t.Errorf("printed keys do not derive from the printed mnemonic: %+v", k)
		}
	}
	if r := rmb(t, nil, "keygen", "--key-type", "rsa"); r.code == 0 || !strings.Contains(r.stderr, "unknown key type") {
		t.Errorf("bad key type: %+v", r)
	}
}

func TestRegisterAndWhois(t *testing.T) {
	srv := httptest.NewServer(registrar.NewServer(nil).Handler())
	defer srv.Close()
	m, _ := identity.NewMnemonic()
	env := []string{"RMB_MNEMONIC=" + m}
	r := rmb(t, env, "register", "--registrar", srv.URL, "--relay", "relay.example:443", "--json")
	if r.code != 0 {
		t.Fatalf("register: %+v", r)
	}
	var tw twinOut
	if err := json.Unmarshal([]byte(r.stdout), &tw); err != nil || tw.TwinID == 0 || tw.Relays[0] != "relay.example:443" {
		t.Fatalf("register printed %q (%v)", r.stdout, err)
	}
	// Registering again finds the same twin.
	if r2 := rmb(t, env, "register", "--registrar", srv.URL, "--json"); r2.code != 0 || !strings.Contains(r2.stderr, "already registered") {
		t.Errorf("second register: %+v", r2)
	}
	r = rmb(t, nil, "whois", "--registrar", srv.URL, itoa(tw.TwinID))
	if r.code != 0 || !strings.Contains(r.stdout, "relay.example:443") {
		t.Errorf("whois: %+v", r)
	}
	if r := rmb(t, nil, "whois", "--registrar", srv.URL, "999"); r.code != 1 || !strings.Contains(r.stderr, "not registered") {
		t.Errorf("whois unknown: %+v", r)
	}
	if r := rmb(t, nil, "whois", "--registrar", srv.URL, "abc"); r.code != 1 || !strings.Contains(r.stderr, "not a twin id") {
		t.Errorf("whois garbage: %+v", r)
	}
	if r := rmb(t, nil, "whois", "--registrar", "http://127.0.0.1:1", "5"); r.code != 1 || !strings.Contains(r.stderr, "registrar") {
		t.Errorf("whois unreachable: %+v", r)
	}
	if r := rmb(t, []string{"RMB_MNEMONIC="}, "register", "--registrar", srv.URL); r.code != 1 || !strings.Contains(r.stderr, "no secret") {
		t.Errorf("register without secret: %+v", r)
	}
	if r := rmb(t, nil, "register", "--registrar", srv.URL, "-m", "not words"); r.code != 1 || !strings.Contains(r.stderr, "secret") {
		t.Errorf("register with a bad secret: %+v", r)
	}
}

func TestServeAndCallOverRedis(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// rmb serve answers what a peer would push.
	serve := exec.CommandContext(ctx, rmbBin, "serve", "--cmd", "echo", "--redis", s.URL())
	var serveOut bytes.Buffer
	serve.Stdout = &serveOut
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { serve.Process.Kill(); serve.Wait() }()
	req, _ := json.Marshal(redisapi.IncomingRequest{Version: 1, Ref: "r1", Source: "41", Command: "echo", Data: "aGk=", ReplyTo: "replies"})
	rdb.LPush(ctx, "msgbus.echo", req)
	res, err := rdb.BRPop(ctx, 10*time.Second, "replies").Result()
	if err != nil {
		t.Fatalf("rmb serve did not answer: %v", err)
	}
	var resp redisapi.OutgoingResponse
	if err := json.Unmarshal([]byte(res[1]), &resp); err != nil || resp.Ref != "r1" || resp.Data != "aGk=" || resp.Destination != "41" {
		t.Fatalf("rmb serve answered %s", res[1])
	}

	// rmb call: play the peer with go-redis, answering with an error for
	// one twin and data for the other.
	go func() {
		res, err := rdb.BRPop(ctx, 10*time.Second, redisapi.QueueLocal).Result()
		if err != nil {
			return
		}
		var r redisapi.OutgoingRequest
		json.Unmarshal([]byte(res[1]), &r)
		ok, _ := json.Marshal(redisapi.IncomingResponse{Version: 1, Ref: r.Ref, Data: "Mw==", Source: "55"})
		bad, _ := json.Marshal(redisapi.IncomingResponse{Version: 1, Ref: r.Ref, Source: "66", Error: &redisapi.Error{Code: 404, Message: "no such command"}})
		rdb.LPush(ctx, r.ReplyTo, ok, bad)
	}()
	r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "55,66", "--cmd", "calc.add", "--data", "[1,2]")
	if r.code != 1 || !strings.Contains(r.stdout, "55: 3") || !strings.Contains(r.stdout, "66: error 404: no such command") {
		t.Errorf("call with one error answer: %+v", r)
	}
	// Nobody answers: non-zero exit after the TTL.
	r = rmb(t, nil, "call", "--redis", s.URL(), "--dst", "55", "--cmd", "x", "--ttl", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "timed out") {
		t.Errorf("unanswered call: %+v", r)
	}
	if r := rmb(t, nil, "call", "--redis", s.URL(), "--cmd", "x"); r.code != 2 {
		t.Errorf("call without --dst: %+v", r)
	}
	if r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "0", "--cmd", "x"); r.code != 2 {
		t.Errorf("call to twin 0: %+v", r)
	}
	if r := rmb(t, nil, "call", "--redis", "redis://127.0.0.1:1", "--dst", "5", "--cmd", "x"); r.code != 1 || !strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("call with Redis down: %+v", r)
	}
}

func hexs(b []byte) string { return hex.EncodeToString(b) }

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestDeadletter(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	ctx := context.Background()
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "list"); r.code != 0 || !strings.Contains(r.stdout, "no dead letters") {
		t.Fatalf("empty list: %+v", r)
	}
	entry := func(queue, msg, reason string) string {
		b, _ := json.Marshal(redisapi.DeadLetter{Queue: queue, Message: msg, Reason: reason, Code: 101, Time: time.Now()})
		return string(b)
	}
	garbage := entry(redisapi.QueueLocal, "{not json", "bad JSON: unexpected end")
	undeliverable := entry(redisapi.QueueLocal, `{"ver":1,"cmd":"x","dst":[5],"ret":"r"}`, "no relay before the TTL")
	rdb.LPush(ctx, redisapi.QueueDeadLetter, garbage, undeliverable, "not even json")

	r := rmb(t, nil, "deadletter", "--redis", s.URL(), "list")
	if r.code != 0 || !strings.Contains(r.stdout, "bad JSON") || !strings.Contains(r.stdout, "no relay before the TTL") || !strings.Contains(r.stdout, "entry is not JSON") {
		t.Fatalf("list: %+v", r)
	}
	idGarbage, idUndeliverable := letterID(garbage), letterID(undeliverable)
	if r := rmb(t, nil, "deadletter", "show", idUndeliverable, "--redis", s.URL()); r.code != 0 || !strings.Contains(r.stdout, `"reason": "no relay before the TTL"`) {
		t.Errorf("show: %+v", r)
	}
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "show", "ffffffffff"); r.code != 1 || !strings.Contains(r.stderr, "no dead letter") {
		t.Errorf("show unknown: %+v", r)
	}
	// Requeue puts the original message back where it came from, once.
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "requeue", idUndeliverable); r.code != 0 || !strings.Contains(r.stdout, "requeued 1 of 1") {
		t.Fatalf("requeue: %+v", r)
	}
	if got, _ := rdb.LRange(ctx, redisapi.QueueLocal, 0, -1).Result(); len(got) != 1 || got[0] != `{"ver":1,"cmd":"x","dst":[5],"ret":"r"}` {
		t.Fatalf("after requeue %s holds %q", redisapi.QueueLocal, got)
	}
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "requeue", idUndeliverable); r.code != 1 {
		t.Errorf("second requeue of the same entry: %+v", r)
	}
	// An entry that is not JSON cannot be requeued, only dropped.
	notJSON := letterID("not even json")
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "requeue", notJSON); r.code != 1 || !strings.Contains(r.stderr, "drop it instead") {
		t.Errorf("requeue of garbage: %+v", r)
	}
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "drop", idGarbage, notJSON); r.code != 0 || !strings.Contains(r.stdout, "dropped 2 of 2") {
		t.Errorf("drop: %+v", r)
	}
	if n, _ := rdb.LLen(ctx, redisapi.QueueDeadLetter).Result(); n != 0 {
		t.Errorf("%d dead letters left", n)
	}
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "drop"); r.code != 1 || !strings.Contains(r.stderr, "--all") {
		t.Errorf("drop without ids: %+v", r)
	}
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "frob"); r.code != 1 || !strings.Contains(r.stderr, "unknown action") {
		t.Errorf("unknown action: %+v", r)
	}
	rdb.LPush(ctx, redisapi.QueueDeadLetter, garbage, undeliverable)
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "drop", "--all"); r.code != 0 || !strings.Contains(r.stdout, "dropped 2 of 2") {
		t.Errorf("drop --all: %+v", r)
	}
}

func TestDemo(t *testing.T) {
	r := rmb(t, nil, "demo", "--bin", filepath.Dir(rmbBin))
	if r.code != 0 {
		t.Fatalf("demo failed: %+v", r)
	}
	for _, want := range []string{"calc.add     [1,2]  → 3", "calc.mul     [6,7]  → 42", "error 400: division by zero", "demo calls succeeded"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, r.stdout)
		}
	}
	// With a Redis given, the demo uses it instead of starting one.
	rs := redistest.Start(t, nil)
	r = rmb(t, nil, "demo", "--bin", filepath.Dir(rmbBin), "--redis", rs.Addr)
	if r.code != 0 || !strings.Contains(r.stdout, "using the Redis at "+rs.Addr) || strings.Contains(r.stdout, "starting redis-server") {
		t.Errorf("demo --redis: %+v", r)
	}
	if r := rmb(t, nil, "demo", "--bin", filepath.Dir(rmbBin), "--redis", "127.0.0.1:1"); r.code != 1 || !strings.Contains(r.stderr, "does not answer") {
		t.Errorf("demo with a dead Redis: %+v", r)
	}
	if r := rmb(t, nil, "demo", "--bin", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("demo without binaries: %+v", r)
	}
}

func TestBench(t *testing.T) {
	r := rmb(t, nil, "bench", "relay", "--pairs", "2", "--messages", "500", "--json")
	if r.code != 0 {
		t.Fatalf("bench relay: %+v", r)
	}
	// snake_case keys, durations in microseconds under keys ending in _us.
	var rel struct {
		Sent, Delivered, Lost int64
		PayloadSize           int     `json:"payload_size"`
		PerSecond             float64 `json:"per_second"`
		Elapsed               float64 `json:"elapsed_us"`
		Latency               struct {
			P50 float64 `json:"p50_us"`
			P99 float64 `json:"p99_us"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &rel); err != nil || rel.Sent != 1000 || rel.Delivered != 1000 || rel.Lost != 0 ||
		rel.PayloadSize != 256 || rel.PerSecond <= 0 || rel.Elapsed < 1 || rel.Latency.P50 <= 0 || rel.Latency.P99 < rel.Latency.P50 {
		t.Errorf("bench relay --json printed %q (%v)", r.stdout, err)
	}
	if strings.ContainsAny(r.stdout, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
		t.Errorf("bench relay --json has keys that are not snake_case: %s", r.stdout)
	}
	// Text, on a pipe: the tables, and no progress line drawn with
	// escape codes (the phases last long enough for one).
	r = rmb(t, nil, "bench", "e2e", "--callers", "2", "--duration", "2s")
	if r.code != 0 || !strings.Contains(r.stdout, "round trips/s") || !strings.Contains(r.stdout, "plain redis") {
		t.Errorf("bench e2e: %+v", r)
	}
	if strings.ContainsAny(r.stdout+r.stderr, "\r\x1b") {
		t.Errorf("bench e2e wrote escape codes to a pipe: %q", r.stderr)
	}
	// The peers as rmb-peer processes, Redis by unix socket, bus only,
	// as JSON: every round trip answered, the cost measured.
	r = rmb(t, nil, "bench", "e2e", "--callers", "2", "--duration", "1s", "--unix", "--no-plain", "--json",
		"--peer-bin", filepath.Join(filepath.Dir(rmbBin), "rmb-peer"))
	var e2e struct {
		Bus struct {
			RoundTrips int64 `json:"round_trips"`
			Errors     int64
			Latency    struct {
				P99 float64 `json:"p99_us"`
			}
			Cost struct {
				RedisCommands float64 `json:"redis_commands"`
				MachineCPU    float64 `json:"machine_cpu_us"`
			}
		}
		PlainRedis struct {
			RoundTrips int64 `json:"round_trips"`
		} `json:"plain_redis"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &e2e); r.code != 0 || err != nil || e2e.Bus.RoundTrips == 0 ||
		e2e.Bus.Errors != 0 || e2e.Bus.Cost.RedisCommands < 4 || e2e.PlainRedis.RoundTrips != 0 || e2e.Bus.Latency.P99 <= 0 || e2e.Bus.Cost.MachineCPU <= 0 {
		t.Errorf("bench e2e --peer-bin --unix --no-plain --json: %+v (%v)", r, err)
	}
	if r := rmb(t, nil, "bench", "e2e", "--duration", "1s", "--peer-bin", "/nonexistent/rmb-peer"); r.code != 1 ||
		!strings.Contains(r.stderr, "start peer 1") {
		t.Errorf("bench e2e with a missing peer binary: %+v", r)
	}
	if r := rmb(t, nil, "bench", "e2e", "--memprofile"); r.code == 0 || !strings.Contains(r.stderr, "needs a file name") {
		t.Errorf("bench e2e --memprofile without a file: %+v", r)
	}
	if r := rmb(t, nil, "bench"); r.code != 2 {
		t.Errorf("bench without a mode: %+v", r)
	}
	if r := rmb(t, nil, "bench", "relay", "--pairs", "x"); r.code != 2 {
		t.Errorf("bench with a bad flag: %+v", r)
	}
}

func TestCallTTL(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, tc := range []struct{ ttl, want string }{
		{"500ms", "--ttl 500ms is below one second: allowed 1 to 1800 seconds"},
		{"0", "--ttl 0s is below one second: allowed 1 to 1800 seconds"},
		{"-1", "-ttl: -1 is out of range: allowed 1 to 1800 seconds"},
		{"-2s", "-ttl: -2s is negative: allowed 1 to 1800 seconds"},
		{"1801", "--ttl 30m1s is above the protocol's maximum: allowed 1 to 1800 seconds"},
		{"1h", "--ttl 1h0m0s is above the protocol's maximum"},
		{"soon", `want seconds (30) or a duration (90s), got "soon"`},
	} {
		r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "5", "--cmd", "x", "--ttl", tc.ttl)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--ttl %s: want exit 2 and %q, got %+v", tc.ttl, tc.want, r)
		}
	}
	if n, _ := rdb.LLen(ctx, redisapi.QueueLocal).Result(); n != 0 {
		t.Errorf("a refused --ttl still sent %d requests", n)
	}
	// Plain seconds, and a fraction rounded up with a note: the envelope
	// carries the TTL the caller waits for.
	for _, tc := range []struct {
		ttl  string
		exp  int64
		note bool
	}{{"2", 2, false}, {"1500ms", 2, true}} {
		got := make(chan redisapi.OutgoingRequest, 1)
		go func() {
			res, err := rdb.BRPop(ctx, 30*time.Second, redisapi.QueueLocal).Result()
			if err != nil {
				close(got)
				return
			}
			var req redisapi.OutgoingRequest
			json.Unmarshal([]byte(res[1]), &req)
			got <- req // and no answer
		}()
		start := time.Now()
		r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "5", "--cmd", "x", "--ttl", tc.ttl)
		took := time.Since(start)
		req := <-got
		if r.code != 1 || !strings.Contains(r.stderr, "timed out") || req.Expiration != tc.exp {
			t.Errorf("--ttl %s: sent exp %d (want %d): %+v", tc.ttl, req.Expiration, tc.exp, r)
		}
		if took < time.Duration(tc.exp)*time.Second {
			t.Errorf("--ttl %s: gave up after %s, before the %ds it sent", tc.ttl, took, tc.exp)
		}
		if hasNote := strings.Contains(r.stderr, "rounded up to 2s"); hasNote != tc.note {
			t.Errorf("--ttl %s: note about rounding %v, want %v: %q", tc.ttl, hasNote, tc.note, r.stderr)
		}
		if age := time.Now().Unix() - req.Now; age < -1 || age > 30 {
			t.Errorf("--ttl %s: now %d is not the time of sending", tc.ttl, req.Now)
		}
	}
}

// A 504'd request requeued as it was would time out again at once: its
// now is old. Requeue gives it a fresh now, and --ttl a new exp.
func TestDeadletterRequeueRefreshes(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	ctx := context.Background()
	old := time.Now().Add(-time.Hour).Unix()
	req := `{"ver":1,"ref":"r1","cmd":"calc.add","exp":30,"dat":"WzEsMl0=","tag":null,"dst":[5],"ret":"msgbus.reply.r1","shm":"application/json","now":` + strconv.FormatInt(old, 10) + `}`
	entry := func() string {
		b, _ := json.Marshal(redisapi.DeadLetter{Queue: redisapi.QueueLocal, Message: req, Reason: "timed out", Code: 504, Time: time.Now()})
		return string(b)
	}()
	id := letterID(entry)
	popped := func() map[string]any {
		t.Helper()
		got, err := rdb.LPop(ctx, redisapi.QueueLocal).Result()
		if err != nil {
			t.Fatalf("nothing requeued on %s: %v", redisapi.QueueLocal, err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(got), &m); err != nil {
			t.Fatalf("requeued %q: %v", got, err)
		}
		return m
	}
	fresh := func(m map[string]any) bool {
		age := float64(time.Now().Unix()) - m["now"].(float64)
		return age >= -1 && age < 60
	}
	for _, tc := range []struct {
		args []string
		exp  float64
	}{{nil, 30}, {[]string{"--ttl", "120"}, 120}, {[]string{"--ttl", "2m30s"}, 150}} {
		rdb.LPush(ctx, redisapi.QueueDeadLetter, entry)
		args := append([]string{"deadletter", "--redis", s.URL(), "requeue", id}, tc.args...)
		if r := rmb(t, nil, args...); r.code != 0 || !strings.Contains(r.stdout, "requeued 1 of 1") {
			t.Fatalf("requeue %v: %+v", tc.args, r)
		}
		m := popped()
		if !fresh(m) || m["exp"] != tc.exp || m["ref"] != "r1" || m["ret"] != "msgbus.reply.r1" || m["dat"] != "WzEsMl0=" {
			t.Errorf("requeue %v pushed %v: want now ≈ %d, exp %v, the rest as it was", tc.args, m, time.Now().Unix(), tc.exp)
		}
	}
	// Bad --ttl values, --ttl outside requeue, --ttl on a message that
	// is not a request: refused, and the entry stays.
	rdb.LPush(ctx, redisapi.QueueDeadLetter, entry)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"requeue", id, "--ttl", "0"}, "--ttl 0s is below one second"},
		{[]string{"requeue", id, "--ttl", "3h"}, "above the protocol's maximum"},
		{[]string{"drop", id, "--ttl", "5"}, "--ttl applies to requeue only"},
	} {
		if r := rmb(t, nil, append([]string{"deadletter", "--redis", s.URL()}, tc.args...)...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("deadletter %v: want %q, got %+v", tc.args, tc.want, r)
		}
	}
	if n, _ := rdb.LLen(ctx, redisapi.QueueDeadLetter).Result(); n != 1 {
		t.Errorf("refused commands changed the dead letters: %d left", n)
	}
	resp, _ := json.Marshal(redisapi.DeadLetter{Queue: redisapi.QueueReply, Message: `"just a string"`, Reason: "x", Time: time.Now()})
	rdb.LPush(ctx, redisapi.QueueDeadLetter, resp)
	if r := rmb(t, nil, "deadletter", "--redis", s.URL(), "requeue", letterID(string(resp)), "--ttl", "5"); r.code != 1 || !strings.Contains(r.stderr, "--ttl cannot apply") {
		t.Errorf("requeue --ttl of a non-request: %+v", r)
	}
}

// answerCalls plays the peer for n requests: answer(i, req) gives the
// response to the i-th (from 1), nil for none.
func answerCalls(ctx context.Context, rdb *redis.Client, n int, answer func(i int, req redisapi.OutgoingRequest) *redisapi.IncomingResponse) {
	go func() {
		for i := 1; i <= n; i++ {
			res, err := rdb.BRPop(ctx, 30*time.Second, redisapi.QueueLocal).Result()
			if err != nil {
				return
			}
			var req redisapi.OutgoingRequest
			json.Unmarshal([]byte(res[1]), &req)
			if r := answer(i, req); r != nil {
				b, _ := json.Marshal(r)
				rdb.LPush(ctx, req.ReplyTo, b)
			}
		}
	}()
}

func TestCallCount(t *testing.T) {
	s := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Three calls: two answered, one error answer.
	answerCalls(ctx, rdb, 3, func(i int, req redisapi.OutgoingRequest) *redisapi.IncomingResponse {
		if i == 2 {
			return &redisapi.IncomingResponse{Version: 1, Ref: req.Ref, Source: "55", Error: &redisapi.Error{Code: 500, Message: "boom"}}
		}
		return &redisapi.IncomingResponse{Version: 1, Ref: req.Ref, Source: "55", Data: "Mw=="}
	})
	start := time.Now()
	r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "55", "--cmd", "calc.add", "--count", "3", "--interval", "300ms")
	if took := time.Since(start); took < 600*time.Millisecond {
		t.Errorf("3 calls 300ms apart took %s", took)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 1 || len(lines) != 4 || !strings.HasPrefix(lines[0], "1: 3  (") || !strings.HasPrefix(lines[1], "2: 55: error 500: boom  (") ||
		!strings.HasPrefix(lines[2], "3: 3  (") || !strings.HasSuffix(lines[2], ")") ||
		!strings.Contains(lines[3], "3 calls, 2 answered, 1 errors; round trip p50 ") || !strings.Contains(lines[3], " p99 ") {
		t.Errorf("--count 3 with one error: %+v", r)
	}
	// Not a terminal: no spinner, no escape codes.
	if strings.ContainsAny(r.stderr+r.stdout, "\r\x1b") {
		t.Errorf("escape codes without a terminal: %q", r.stderr)
	}
	// As JSON: a line per call, then the summary; exit 0 when all answered.
	answerCalls(ctx, rdb, 2, func(i int, req redisapi.OutgoingRequest) *redisapi.IncomingResponse {
		return &redisapi.IncomingResponse{Version: 1, Ref: req.Ref, Source: "55", Data: "Mw=="}
	})
	r = rmb(t, nil, "call", "--redis", s.URL(), "--dst", "55", "--cmd", "calc.add", "--count", "2", "--interval", "0", "--json")
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	var first struct {
		Seq       int   `json:"seq"`
		RTT       int64 `json:"rtt_us"`
		Responses []redisapi.IncomingResponse
	}
	var sum callSummary
	if r.code != 0 || len(lines) != 3 || json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[2]), &sum) != nil ||
		first.Seq != 1 || first.RTT <= 0 || len(first.Responses) != 1 || sum.Calls != 2 || sum.Answered != 2 || sum.P50 <= 0 || sum.P99 < sum.P50 {
		t.Errorf("--count 2 --json: %+v", r)
	}
	// A call nobody answers counts as an error.
	r = rmb(t, nil, "call", "--redis", s.URL(), "--dst", "55", "--cmd", "x", "--ttl", "1", "--count", "2", "--interval", "0")
	if r.code != 1 || !strings.Contains(r.stdout, "2 calls, 0 answered, 2 errors") || !strings.Contains(r.stderr, "1: redisapi: timed out") {
		t.Errorf("--count 2 unanswered: %+v", r)
	}
	for _, bad := range [][]string{{"--count", "0"}, {"--interval", "-1s"}} {
		if r := rmb(t, nil, append([]string{"call", "--redis", s.URL(), "--dst", "55", "--cmd", "x"}, bad...)...); r.code != 2 || !strings.Contains(r.stderr, bad[0]) {
			t.Errorf("call %v: %+v", bad, r)
		}
	}
}

// openPTY opens a pseudo-terminal: the master to read, the slave to give
// a process as its stderr.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminal: %v", err)
	}
	var unlock int32
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlock pty: %v", e)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, master.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		t.Fatalf("pty number: %v", e)
	}
	slave, err = os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	return master, slave
}

// On a terminal, rmb call shows a spinner on stderr while it waits, and
// erases it.
func TestCallSpinnerOnTerminal(t *testing.T) {
	s := redistest.Start(t, nil)
	master, slave := openPTY(t)
	var tty bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&tty, master); close(copied) }()
	cmd := exec.Command(rmbBin, "call", "--redis", s.URL(), "--dst", "55", "--cmd", "x", "--ttl", "1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, slave
	if err := cmd.Run(); err == nil {
		t.Fatal("an unanswered call succeeded")
	}
	slave.Close()
	select {
	case <-copied:
	case <-time.After(10 * time.Second):
		master.Close()
		<-copied
	}
	if got := tty.String(); !strings.Contains(got, "waiting for x from 55") || !strings.Contains(got, "\r\x1b[K") || !strings.Contains(got, "timed out") {
		t.Errorf("terminal showed %q", got)
	}
	if strings.Contains(out.String(), "\x1b") {
		t.Errorf("escape codes on stdout: %q", out.String())
	}
}

// lockedBuffer is a bytes.Buffer a process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rmb serve outlives a restart of its Redis: it says once that it lost
// Redis and once that it is back, and answers again.
func TestServeSurvivesRedisRestart(t *testing.T) {
	s := redistest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	serve := exec.CommandContext(ctx, rmbBin, "serve", "--cmd", "echo", "--redis", s.URL())
	var stderr lockedBuffer
	serve.Stderr = &stderr
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { serve.Process.Kill(); serve.Wait() }()
	// echo sends a request and waits for its answer; pushes are repeated
	// while Redis comes back, as the first may be lost with it.
	echo := func(ref string) error {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
		defer rdb.Close()
		req, _ := json.Marshal(redisapi.IncomingRequest{Version: 1, Ref: ref, Source: "41", Command: "echo", Data: "aGk=", ReplyTo: "replies." + ref})
		return wait.For(ctx, 60*time.Second, func() error {
			if n, _ := rdb.LLen(ctx, "msgbus.echo").Result(); n == 0 {
				if err := rdb.LPush(ctx, "msgbus.echo", req).Err(); err != nil {
					return err
				}
			}
			res, err := rdb.BRPop(ctx, time.Second, "replies."+ref).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(res[1], `"ref":"`+ref+`"`) {
				return fmt.Errorf("answer %s", res[1])
			}
			return nil
		})
	}
	if err := echo("before"); err != nil {
		t.Fatalf("rmb serve did not answer: %v", err)
	}
	// Down long enough to be noticed (go-redis retries hide a short
	// blip), then back on the same address.
	s.Kill()
	if err := wait.For(ctx, 60*time.Second, func() error {
		if !strings.Contains(stderr.String(), "lost Redis") {
			return errors.New("rmb serve has not noticed")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, stderr.String())
	}
	s.Restart(t)
	if err := echo("after"); err != nil {
		t.Fatalf("rmb serve did not answer after Redis restarted: %v\n%s", err, stderr.String())
	}
	log := stderr.String()
	if strings.Count(log, "lost Redis at "+s.URL()) != 1 || strings.Count(log, "is back after") != 1 {
		t.Errorf("want one line for the loss and one for the return, got:\n%s", log)
	}
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{"PerSecond": "per_second", "RSSPerSession": "rss_per_session", "P50": "p50",
		"MachineCPU": "machine_cpu", "PayloadSize": "payload_size", "N": "n", "PeerRedisTrips": "peer_redis_trips"} {
		if got := snake(in); got != want {
			t.Errorf("snake(%q) = %q, want %q", in, got, want)
		}
	}
}
