package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// SIGHUP reloads the twins section of --allow: a session from a network
// its twin may no longer use is closed (1008 with the reason) and the twin
// is refused (403); a broken file is reported and the old policy stays.
func TestReloadTwinNetworks(t *testing.T) {
	reg := httptest.NewServer(registrar.NewServer(nil).Handler())
	defer reg.Close()
	rd := redistest.Start(t, nil)
	const domain = "relay.test"
	a := register(t, reg.URL, domain)
	b := register(t, reg.URL, domain)
	allow := filepath.Join(t.TempDir(), "allow.yaml")
	os.WriteFile(allow, fmt.Appendf(nil, "allow: \"*\"\ntwins:\n  %d:\n    networks: [127.0.0.0/8]\n", a.num), 0o600)

	logs := &syncBuffer{}
	m := NewMain()
	m.Stderr = logs
	if err := m.ParseFlags([]string{"--listen", "127.0.0.1:0", "-m", domain, "--registrar", reg.URL,
		"--redis", rd.URL(), "--allow", allow}); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ca, st := connect(t, m.Addr(), a)
	if st != 101 {
		t.Fatalf("a from 127.0.0.1: %d", st)
	}
	cb, _ := connect(t, m.Addr(), b)

	sigs := make(chan os.Signal, 2)
	done := make(chan struct{})
	go func() { m.HandleSignals(sigs); close(done) }()
	defer func() { sigs <- syscall.SIGTERM; <-done }()

	// A broken file: a clear error, the old policy stays (a still in).
	os.WriteFile(allow, fmt.Appendf(nil, "twins:\n  %d:\n    networks: [10.0.0.0/33]\n", a.num), 0o600)
	sigs <- syscall.SIGHUP
	waitLog(t, logs, "policy reload failed, keeping the old one")
	if !strings.Contains(logs.String(), "10.0.0.0/33 is not a CIDR network") {
		t.Fatalf("the error does not say what is wrong:\n%s", logs.String())
	}
	exchange(t, a, ca, b, cb, "still")

	// a's network changes: its session is closed, it is refused.
	os.WriteFile(allow, fmt.Appendf(nil, "twins:\n  %d:\n    networks: 10.0.0.0/8\n", a.num), 0o600)
	sigs <- syscall.SIGHUP
	waitLog(t, logs, "policy reloaded")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _, err := ca.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), "twin not allowed from this network") {
		t.Fatalf("a after the reload: %v, want 1008 with the reason", err)
	}
	if _, st := connect(t, m.Addr(), a); st != http.StatusForbidden {
		t.Fatalf("a reconnecting: %d, want 403", st)
	}
}

func waitLog(t *testing.T, logs *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the logs:\n%s", want, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
