// Package examples_test runs the examples against a real stack: an
// in-process registrar and relay, a real redis-server and rmb-peer library,
// the Go example built and run as a program, the shell example run with
// bash and redis-cli.
package examples_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

type stack struct {
	registrarURL, relayURL string
	reg                    *registrar.Client
}

func startStack(t *testing.T) *stack {
	t.Helper()
	regSrv := httptest.NewServer(registrar.NewServer(nil).Handler())
	t.Cleanup(regSrv.Close)
	reg := registrar.NewClient(regSrv.URL, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl, err := relay.New(&relay.Options{Domains: []string{l.Addr().String()}, Directory: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rl.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rl.Shutdown(ctx)
		srv.Close()
	})
	return &stack{registrarURL: regSrv.URL, relayURL: "ws://" + l.Addr().String(), reg: reg}
}

func TestGoService(t *testing.T) {
	st := startStack(t)
	bin := filepath.Join(t.TempDir(), "go-service")
	if out, err := exec.Command("go", "build", "-o", bin, "./go-service").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, _ := identity.NewMnemonic()
	server := exec.CommandContext(ctx, bin, "--relay", st.relayURL, "--registrar", st.registrarURL)
	server.Env = append(os.Environ(), "RMB_MNEMONIC="+m)
	stdout, _ := server.StdoutPipe()
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var line [128]byte
	n, _ := stdout.Read(line[:])
	var twin string
	if f := strings.Fields(string(line[:n])); len(f) >= 2 && f[0] == "twin" {
		twin = f[1]
	} else {
		t.Fatalf("server printed %q", line[:n])
	}
	out, err := exec.CommandContext(ctx, bin, "--relay", st.relayURL, "--registrar", st.registrarURL, "--call", twin).CombinedOutput()
	if err != nil {
		t.Fatalf("caller: %v\n%s", err, out)
	}
	if want := "answered: hello world, from twin " + twin; !strings.Contains(string(out), want) {
		t.Fatalf("caller printed %q, want %q", out, want)
	}
}

func TestShellCall(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli not found: run `make test` (installs redis-server, which brings redis-cli)")
	}
	st := startStack(t)
	rs := redistest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Two peers with the Redis API on DBs 1 and 2; an echo service on 2.
	var twins [2]uint32
	for i := range 2 {
		m, _ := identity.NewMnemonic()
		id, _ := identity.FromSecret(m, identity.Sr25519)
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: i + 1})
		defer rdb.Close()
		p, err := peer.New(&peer.Options{Identity: id, Relays: []string{st.relayURL}, Registrar: st.reg, Redis: rdb})
		if err != nil {
			t.Fatal(err)
		}
		go p.Run(ctx)
		select {
		case <-p.Ready():
		case <-ctx.Done():
			t.Fatal("peer not ready")
		}
		twins[i] = p.Twin()
		if i == 1 {
			go redisapi.NewClient(rdb).Serve(ctx, "echo", func(_ context.Context, _ *redisapi.IncomingRequest, b []byte) ([]byte, error) {
				return b, nil
			}, nil)
		}
	}
	url := "redis://" + rs.Addr + "/1"
	var out []byte
	var err error
	// The first call may race the second peer's relay session coming up.
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		out, err = exec.CommandContext(ctx, "bash", "shell/call.sh", jsonNum(twins[1]), "echo", `{"x":1}`, url).CombinedOutput()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("call.sh: %v\n%s", err, out)
	}
	var r struct{ From, Answer string }
	if err := json.Unmarshal(out, &r); err != nil || r.From != jsonNum(twins[1]) || r.Answer != `{"x":1}` {
		t.Fatalf("call.sh printed %q", out)
	}
}

func jsonNum(n uint32) string { b, _ := json.Marshal(n); return string(b) }
