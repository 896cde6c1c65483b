package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"github.com/rmb-go/rmb/internal/buildinfo"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
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

type twin struct {
	id  *identity.Identity
	num uint32
}

func register(t *testing.T, url string, relays ...string) *twin {
	t.Helper()
	seed := make([]byte, 32)
	rand.Read(seed)
	id, _ := identity.FromSeed(seed, identity.Ed25519)
	tw, err := registrar.NewClient(url, nil).Register(context.Background(), id, relays)
	if err != nil {
		t.Fatal(err)
	}
	return &twin{id: id, num: tw.ID}
}

func connect(t *testing.T, addr string, tw *twin) (*websocket.Conn, int) {
	t.Helper()
	tok, _ := identity.NewToken(tw.id, tw.num, "", time.Now(), time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/?"+tok, nil)
	if err != nil {
		if resp != nil {
			return nil, resp.StatusCode
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c, 101
}

func exchange(t *testing.T, from *twin, cf *websocket.Conn, to *twin, ct *websocket.Conn, payload string) {
	t.Helper()
	e := envelope.NewRequest("u-"+payload, "cmd", []byte(payload), 60)
	e.Source, e.Destination = envelope.NewAddress(from.num, ""), envelope.NewAddress(to.num, "")
	e.Stamp(time.Now())
	e.Sign(from.id)
	b, _ := envelope.Marshal(e)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cf.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatal(err)
	}
	_, got, err := ct.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, err := envelope.Unmarshal(got, 0)
	if err != nil || string(in.GetPlain()) != payload {
		t.Fatalf("got %v %v", in, err)
	}
}

func TestParseFlags(t *testing.T) {
	m := NewMain()
	err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", "a.example", "--domain", "b.example,c.example",
		"--registrar", "http://reg", "--limit", "100", "--ranker-period", "60", "--limit-window", "2m", "--debug"})
	if err != nil {
		t.Fatal(err)
	}
	m2 := NewMain()
	if err := m2.ParseFlags([]string{"-m", "a", "--registrar", "http://r", "--trusted-proxy", "10.0.0.0/8,192.0.2.1",
		"--queue-twin-max-bytes", "1000", "--max-sessions-per-address", "5"}); err != nil {
		t.Fatal(err)
	}
	m3 := NewMain()
	if err := m3.ParseFlags([]string{"-m", "a", "--registrar", "http://r", "--redis", "redis://x", "--nats", "nats://n1:4222,nats://n2:4222", "--instance", "r1"}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m3.NATS) != "[nats://n1:4222 nats://n2:4222]" || m3.Instance != "r1" {
		t.Fatalf("parsed %+v", m3)
	}
	if fmt.Sprint(m2.TrustedProxies) != "[10.0.0.0/8 192.0.2.1/32]" || m2.Store.MaxTwinBytes != 1000 || m2.SessionsPerAddress != 5 {
		t.Fatalf("parsed %+v", m2)
	}
	if fmt.Sprint(m.Domains) != "[a.example b.example c.example]" || m.Limit != 100 ||
		m.RankerPeriod != time.Minute || m.LimitWindow != 2*time.Minute || m.Debug != 1 || m.Listen != "127.0.0.1:0" {
		t.Fatalf("parsed %+v", m)
	}
	for _, bad := range [][]string{
		{"-m", "a"},                 // no registrar
		{"--registrar", "http://r"}, // no domain
		{"--registrar", "http://r", "-m", "a", "--tls-cert", "c"}, // cert without key
		{"--registrar", "http://r", "-m", "a", "--ranker-period", "soon"},
		{"--registrar", "http://r", "-m", "a", "--debug", "extra"},
		{"--registrar", "http://r", "-m", "a", "--federation-queue", "0"},
		{"--registrar", "http://r", "-m", "a", "--federation-max-bytes", "-1"},
		{"--registrar", "http://r", "-m", "a", "--trusted-proxy", "not-a-cidr"},
		{"--registrar", "http://r", "-m", "a", "--store-max-bytes", "0"},
		{"--registrar", "http://r", "-m", "a", "--max-sessions-per-twin", "-1"},
		{"--registrar", "http://r", "-m", "a", "--read-timeout", "0s"},
		{"--registrar", "http://r", "-m", "a", "--send-queue-bytes", "0"},
		{"--registrar", "http://r", "-m", "a", "--nats", "nats://127.0.0.1:4222"}, // cluster without --redis
		{"--registrar", "http://r", "-m", "a", "--instance", "x"},                 // instance without cluster
	} {
		m := NewMain()
		m.Stderr = &bytes.Buffer{}
		if err := m.ParseFlags(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRun(t *testing.T) {
	reg := httptest.NewServer(registrar.NewServer(nil).Handler())
	defer reg.Close()
	rd := redistest.Start(t, nil)
	const domain = "relay.test"
	a := register(t, reg.URL, domain)
	b := register(t, reg.URL, domain)

	dir := t.TempDir()
	allow := filepath.Join(dir, "allow.yaml")
	os.WriteFile(allow, fmt.Appendf(nil, "- %d\n", a.num), 0o600)

	logs := &syncBuffer{}
	m := NewMain()
	m.Stderr = logs
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", domain, "--registrar", reg.URL,
		"--redis", rd.URL(), "--allow", allow, "--admin-token", "t", "--pprof", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.Contains(logs.String(), "listening addr="+m.Addr()) {
		t.Fatalf("no listening line in %q", logs.String())
	}

	pprofURL := "http://" + m.PprofListenAddr() + "/debug/pprof/goroutine?debug=1"
	if resp, err := http.Get(pprofURL); err != nil || resp.StatusCode != 200 {
		t.Fatalf("--pprof: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// The build is named on the status page and in the metrics.
	info := buildinfo.Get()
	for path, want := range map[string]string{
		"/status.json": `"version":` + strconv.Quote(info.String()),
		"/metrics":     `rmb_build_info{commit="` + info.Commit + `",goversion="` + info.GoVersion + `",version="` + info.Version + `"} 1`,
	} {
		resp, err := http.Get("http://" + m.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s lacks %s:\n%.2000s", path, want, body)
		}
	}
	// The profiler is not on the relay's public listener.
	if resp, err := http.Get("http://" + m.Addr() + "/debug/pprof/"); err != nil || resp.StatusCode == 200 {
		t.Fatalf("/debug/pprof/ on the public listener: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	ca, _ := connect(t, m.Addr(), a)
	if _, st := connect(t, m.Addr(), b); st != http.StatusForbidden {
		t.Fatalf("b not on the allow list: got %d", st)
	}
	// SIGHUP reloads the allow list; a's session stays.
	os.WriteFile(allow, fmt.Appendf(nil, "- %d\n- %d\n", a.num, b.num), 0o600)
	sigs := make(chan os.Signal, 2)
	done := make(chan struct{})
	go func() { m.HandleSignals(sigs); close(done) }()
	sigs <- syscall.SIGHUP
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "policy reloaded") {
		if time.Now().After(deadline) {
			t.Fatal("no reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cb, st := connect(t, m.Addr(), b)
	if st != 101 {
		t.Fatalf("b after reload: %d", st)
	}
	exchange(t, a, ca, b, cb, "hello")
	exchange(t, b, cb, a, ca, "back")

	// A broken file keeps the old policy.
	os.WriteFile(allow, []byte("- nope"), 0o600)
	if err := m.Reload(); err == nil {
		t.Fatal("bad allow list accepted")
	}
	exchange(t, a, ca, b, cb, "still")

	sigs <- syscall.SIGTERM
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not end HandleSignals")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(pprofURL); err == nil {
		t.Error("profiler still served after Close")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := ca.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("after Close: %v", err)
	}
}

// A --pprof address already taken fails Run with a clear error, and the
// relay it had started is shut down again: its port is free.
func TestPprofAddressTaken(t *testing.T) {
	reg := httptest.NewServer(registrar.NewServer(nil).Handler())
	defer reg.Close()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := free.Addr().String()
	free.Close()
	m := NewMain()
	m.Stderr = io.Discard
	if err := m.ParseFlags([]string{"--listen", listen, "-m", "relay.test", "--registrar", reg.URL,
		"--pprof", taken.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "--pprof: ") {
		t.Fatalf("want a --pprof error, got %v", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("the relay still holds %s after Run failed: %v", listen, err)
	}
	ln.Close()
}

// TestAdminTokenSources: the admin token comes from --admin-token,
// --admin-token-file or $RMB_ADMIN_TOKEN; the file wins over the
// environment, both flags together are refused, and an empty or missing
// file fails clearly.
func TestAdminTokenSources(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "admin.token")
	os.WriteFile(file, []byte("from-file\n"), 0o400)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o400)
	t.Setenv(AdminTokenEnv, "from-env")
	base := []string{"-m", "r.test", "--registrar", "http://x"}
	for _, tt := range []struct {
		args []string
		want string
		bad  string // part of the error, if any
	}{
		{nil, "from-env", ""},
		{[]string{"--admin-token", "from-flag"}, "from-flag", ""},
		{[]string{"--admin-token-file", file}, "from-file", ""},
		{[]string{"--admin-token-file", empty}, "", "empty"},
		{[]string{"--admin-token-file", filepath.Join(dir, "missing")}, "", "--admin-token-file"},
	} {
		m := NewMain()
		m.Stderr = io.Discard
		if err := m.ParseFlags(append(base, tt.args...)); err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		got, err := m.adminToken()
		if got != tt.want || (err == nil) != (tt.bad == "") || err != nil && !strings.Contains(err.Error(), tt.bad) {
			t.Errorf("%q: token %q, err %v; want %q, error with %q", tt.args, got, err, tt.want, tt.bad)
		}
	}
	m := NewMain()
	m.Stderr = io.Discard
	if err := m.ParseFlags(append(base, "--admin-token", "a", "--admin-token-file", file)); err == nil {
		t.Error("both --admin-token and --admin-token-file accepted")
	}
}
