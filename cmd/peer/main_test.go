package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/rmb-go/rmb/internal/buildinfo"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	registrar string
	relay     string
	redis     *redistest.Server
}

func newEnv(t *testing.T) *env {
	reg := httptest.NewServer(registrar.NewServer(nil).Handler())
	t.Cleanup(reg.Close)
	srv := httptest.NewUnstartedServer(nil)
	domain := srv.Listener.Addr().String()
	r, err := relay.New(&relay.Options{Domains: []string{domain},
		Directory: registrar.NewClient(reg.URL, nil), FederationScheme: "http", FederationAllowPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = r.Handler()
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
		srv.Close()
	})
	return &env{registrar: reg.URL, relay: "ws://" + domain, redis: redistest.Start(t, nil)}
}

func newMnemonic(t *testing.T) string {
	m, err := identity.NewMnemonic()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func startMain(t *testing.T, e *env, environ map[string]string, args ...string) (*Main, *syncBuffer) {
	t.Helper()
	m := NewMain()
	logs := &syncBuffer{}
	m.Stderr = logs
	m.Getenv = func(k string) string { return environ[k] }
	base := []string{"--relay", e.relay, "--registrar", e.registrar, "-r", "tcp://" + e.redis.Addr}
	if err := m.ParseFlags(append(base, args...)); err != nil {
		t.Fatalf("flags: %v\n%s", err, logs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Run(ctx); err != nil {
		t.Fatalf("run: %v\n%s", err, logs)
	}
	t.Cleanup(func() { m.Close() })
	return m, logs
}

func TestRunAnswersVersionAndServesMetrics(t *testing.T) {
	e := newEnv(t)
	m, logs := startMain(t, e, map[string]string{MnemonicEnv: newMnemonic(t)}, "--metrics", "127.0.0.1:0", "--pprof", "127.0.0.1:0", "-d")
	twin := m.Peer().Twin()
	if !strings.Contains(logs.String(), fmt.Sprintf("twin=%d", twin)) {
		t.Fatalf("log does not say twin=%d:\n%s", twin, logs)
	}
	if strings.Contains(logs.String(), "mnemonic") {
		t.Fatal("the log mentions the mnemonic")
	}
	// A client calls rmb.version on its own twin through Redis.
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	req, _ := json.Marshal(map[string]any{"ver": 1, "ref": "r1", "cmd": "rmb.version", "exp": 30, "dat": "",
		"dst": []uint32{twin}, "ret": "myret", "shm": "", "now": time.Now().Unix()})
	rdb.LPush(context.Background(), "msgbus.system.local", req)
	res, err := rdb.BRPop(context.Background(), 10*time.Second, "myret").Result()
	if err != nil {
		t.Fatalf("no answer: %v\n%s", err, logs)
	}
	var ans map[string]any
	json.Unmarshal([]byte(res[1]), &ans)
	dat, _ := base64.StdEncoding.DecodeString(ans["dat"].(string))
	if want, _ := json.Marshal(buildinfo.Get().Line("rmb-go-peer")); ans["ref"] != "r1" || string(dat) != string(want) {
		t.Fatalf("bad answer %v", ans)
	}
	resp, err := http.Get("http://" + m.MetricsListenAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"rmb_peer_requests_sent_total 1", "rmb_peer_relay_connected{relay=\"" + e.relay + "\"} 1", "rmb_peer_round_trip_seconds_count 1", "rmb_build_info{"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + m.MetricsListenAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	e.redis.Pause()
	code, frozen := get("/readyz")
	e.redis.Resume()
	if code != 503 || !strings.Contains(frozen, "redis is not answering") {
		t.Errorf("/readyz with Redis frozen: %d %q", code, frozen)
	}
	pprofURL := "http://" + m.PprofListenAddr() + "/debug/pprof/goroutine?debug=1"
	resp, err = http.Get(pprofURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "peer.(*Peer).popLoop") {
		t.Errorf("--pprof goroutine profile: %d\n%.300s", resp.StatusCode, body)
	}
	m.Close()
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if _, err := http.Get(pprofURL); err == nil {
		t.Error("profiler still served after Close")
	}
}

func TestMnemonicFileAndPolicyReload(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte(newMnemonic(t)+"\n"), 0o600)
	policy := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policy, []byte("default: deny\n"), 0o600)
	m, _ := startMain(t, e, nil, "--mnemonic-file", secret, "-k", "ed25519", "--policy", policy)
	p := m.Peer()
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	call := func() map[string]any {
		req, _ := json.Marshal(map[string]any{"cmd": "rmb.version", "exp": 30, "dat": "",
			"dst": []uint32{p.Twin()}, "ret": "r", "now": time.Now().Unix()})
		rdb.LPush(context.Background(), "msgbus.system.local", req)
		res, err := rdb.BRPop(context.Background(), 10*time.Second, "r").Result()
		if err != nil {
			t.Fatal(err)
		}
		var ans map[string]any
		json.Unmarshal([]byte(res[1]), &ans)
		return ans
	}
	if ans := call(); ans["err"] == nil {
		t.Fatalf("want a denial, got %v", ans)
	}
	os.WriteFile(policy, []byte("default: allow\n"), 0o600)
	if err := m.ReloadPolicy(); err != nil {
		t.Fatal(err)
	}
	if ans := call(); ans["err"] != nil {
		t.Fatalf("want an answer after reload, got %v", ans)
	}
	os.WriteFile(policy, []byte("default: perhaps\n"), 0o600)
	if err := m.ReloadPolicy(); err == nil {
		t.Fatal("bad policy accepted")
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
	}{
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x"}, true},
		{[]string{"--relay", "ws://r:1", "--relay", "wss://r2", "--registrar", "http://x", "-k", "ed25519", "-m", "0x00", "--no-update", "-d"}, true},
		{[]string{"--registrar", "http://x"}, false},
		{[]string{"--relay", "http://r", "--registrar", "http://x"}, false},
		{[]string{"--relay", "ws://r:1"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "-k", "rsa"}, false},
		{[]string{"--relay", "ws://a", "--relay", "ws://b", "--relay", "ws://c", "--relay", "ws://d", "--relay", "ws://e", "--registrar", "http://x"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "-m", "a", "--mnemonic-file", "f"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "extra"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "--serve", "calc.*, echo", "--command-queues", "5", "--command-queue-bytes", "1000", "--command-bytes", "5000", "--answer-cache-bytes", "1"}, true},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "--serve", "calc.[ab]"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "--command-queues", "0"}, false},
		{[]string{"--relay", "ws://r:1", "--registrar", "http://x", "--command-bytes", "-1"}, false},
	}
	for _, tt := range tests {
		m := NewMain()
		m.Stderr = io.Discard
		if err := m.ParseFlags(tt.args); (err == nil) != tt.ok {
			t.Errorf("%q: err = %v", tt.args, err)
		}
	}
}

func TestRedisOptions(t *testing.T) {
	for in, want := range map[string]string{
		"redis://localhost:6379":  "localhost:6379",
		"tcp://127.0.0.1:7000":    "127.0.0.1:7000",
		"unix:///run/redis.sock":  "/run/redis.sock",
		"redis://h:1/2":           "h:1",
		"rediss://secure.example": "secure.example:6379",
	} {
		o, err := RedisOptions(in)
		if err != nil || o.Addr != want || o.Protocol != 2 {
			t.Errorf("%s: %v %v (want %s, RESP2)", in, o, err, want)
		}
	}
	if o, err := RedisOptions("redis://h:1/2?protocol=3"); err != nil || o.Protocol != 3 {
		t.Errorf("protocol=3 in the URL: %v %v", o, err)
	}
	for _, bad := range []string{"http://x", "tcp://", "::", "redis://h:1?protocol=x", "redis://h:1?protocol=7"} {
		if _, err := RedisOptions(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestRedisPasswordNotShown: the password of --redis appears in no log
// line and no error text.
func TestRedisPasswordNotShown(t *testing.T) {
	const pw = "s3cr3t-pw"
	for _, bad := range []string{"redis://:" + pw + "@h:1?protocol=7", "redis://u:" + pw + "@h:1/x", "ftp://u:" + pw + "@h", "redis://u:" + pw + "@h:1\x7f"} {
		if _, err := RedisOptions(bad); err == nil || strings.Contains(err.Error(), pw) {
			t.Errorf("RedisOptions(%q) = %v", bad, err)
		}
	}
	// A peer whose Redis is unreachable at start-up logs the URL.
	e := newEnv(t)
	m := NewMain()
	logs := &syncBuffer{}
	m.Stderr = logs
	m.Getenv = func(string) string { return "" }
	if err := m.ParseFlags([]string{"--relay", e.relay, "--registrar", e.registrar, "-m", newMnemonic(t),
		"--redis", "redis://user:" + pw + "@127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	// It does not get ready without Redis: Run gives up with ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m.Run(ctx)
	m.Close()
	if out := logs.String(); !strings.Contains(out, "redis not reachable") || strings.Contains(out, pw) {
		t.Errorf("log shows the password or not the warning:\n%s", out)
	}
}

func TestRunFailsClearly(t *testing.T) {
	e := newEnv(t)
	m := NewMain()
	m.Stderr = io.Discard
	m.Getenv = func(string) string { return "" }
	if err := m.ParseFlags([]string{"--relay", e.relay, "--registrar", e.registrar}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), MnemonicEnv) {
		t.Fatalf("want a missing-secret error, got %v", err)
	}
	m = NewMain()
	m.Stderr = io.Discard
	m.ParseFlags([]string{"--relay", e.relay, "--registrar", "http://127.0.0.1:1", "-m", newMnemonic(t)})
	err := m.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "registrar") {
		t.Fatalf("want a registrar error, got %v", err)
	}
	// A --pprof address already taken fails Run and stops the peer.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	m = NewMain()
	m.Stderr = io.Discard
	m.ParseFlags([]string{"--relay", e.relay, "--registrar", e.registrar, "--redis", "redis://" + e.redis.Addr,
		"-m", newMnemonic(t), "--pprof", taken.Addr().String()})
	err = m.Run(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "--pprof: ") {
		t.Fatalf("want a --pprof error, got %v", err)
	}
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the peer still runs after Run failed on --pprof")
	}
}
