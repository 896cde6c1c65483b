package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/pgtest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// TestMain doubles as the real program when the signal test re-executes
// the test binary.
func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv("RMB_REGISTRAR_MAIN_ARGS"); ok {
		os.Args = append([]string{"rmb-registrar"}, strings.Fields(args)...)
		main()
		return
	}
	code := m.Run()
	pgtest.StopShared()
	os.Exit(code)
}

const testMnemonic = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"

// syncBuffer is a log sink the server writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runMain parses args, runs the program and closes it when the test ends.
func runMain(t *testing.T, args ...string) (*Main, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	m := NewMain()
	m.Stderr = logs
	if err := m.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, logs
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		listen string
		db     string
		debug  bool
		err    string // part of the error, "" for none
	}{
		{"defaults", nil, ":8090", "rmb-registrar.db", false, ""},
		{"all", []string{"--listen", "127.0.0.1:9000", "--db", "/tmp/x.db", "--debug"}, "127.0.0.1:9000", "/tmp/x.db", true, ""},
		{"single dash and =", []string{"-listen=:1", "-db=:memory:"}, ":1", MemoryDB, false, ""},
		{"unknown flag", []string{"--port", "1"}, "", "", false, "flag provided but not defined"},
		{"missing value", []string{"--listen"}, "", "", false, "needs an argument"},
		{"positional argument", []string{"serve"}, "", "", false, "unexpected arguments"},
		{"empty db", []string{"--db", ""}, "", "", false, "--db"},
		{"bad bool", []string{"--debug=maybe"}, "", "", false, "invalid boolean"},
		{"postgres", []string{"--db", "postgresql://rmb@db.example/rmb"}, ":8090", "postgresql://rmb@db.example/rmb", false, ""},
		{"other scheme", []string{"--db", "mysql://rmb:pw@db.example/rmb"}, "", "", false, "want a file path or a postgres:// URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMain()
			m.Stderr = io.Discard
			err := m.ParseFlags(tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Listen != tt.listen || m.DBPath != tt.db || m.Debug != tt.debug {
				t.Errorf("got listen %q db %q debug %v", m.Listen, m.DBPath, m.Debug)
			}
		})
	}

	var usage bytes.Buffer
	m := NewMain()
	m.Stderr = &usage
	if err := m.ParseFlags([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"Usage: rmb-registrar", "-listen", "-db", "-debug"} {
		if !strings.Contains(usage.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, usage.String())
		}
	}
}

// TestRunRestart runs the real program on a bbolt file twice: accounts,
// twin ids and the change sequence survive.
func TestRunRestart(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "registrar.db")
	id, err := identity.FromSecret(testMnemonic, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}

	m, logs := runMain(t, "--listen", "127.0.0.1:0", "--db", db)
	if !regexp.MustCompile(`msg=listening addr=127\.0\.0\.1:\d+`).MatchString(logs.String()) || !strings.Contains(logs.String(), "addr="+m.Addr()) {
		t.Errorf("log lacks the listening line for %s:\n%s", m.Addr(), logs)
	}
	base := "http://" + m.Addr()
	twin, err := registrar.NewClient(base, nil).Register(ctx, id, []string{"r1.example"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("server still answers after Close")
	}

	m, _ = runMain(t, "--listen", "127.0.0.1:0", "--db", db)
	c := registrar.NewClient("http://"+m.Addr(), nil)
	got, err := c.Twin(ctx, twin.ID)
	if err != nil || got.Relays[0] != "r1.example" || !bytes.Equal(got.PublicKey, id.PublicKey()) {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	if _, err := c.Register(ctx, id, nil); !errors.Is(err, registrar.ErrExists) {
		t.Errorf("registering again after restart: %v", err)
	}
	sr, _ := identity.FromSecret(testMnemonic, identity.Sr25519)
	if next, err := c.Register(ctx, sr, nil); err != nil || next.ID != 2 {
		t.Errorf("next registration: %+v, %v; want twin 2", next, err)
	}
}

func TestRunMemory(t *testing.T) {
	m, _ := runMain(t, "--listen", "127.0.0.1:0", "--db", MemoryDB, "--debug")
	resp, err := http.Get("http://" + m.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d", resp.StatusCode)
	}
	if _, err := os.Stat(MemoryDB); err == nil {
		t.Errorf("--db %s created a file", MemoryDB)
	}
}

// TestCloseWithWaitingPoll checks that shutdown answers a long poll instead
// of waiting it out.
func TestCloseWithWaitingPoll(t *testing.T) {
	m, _ := runMain(t, "--listen", "127.0.0.1:0", "--db", MemoryDB)
	polled := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + m.Addr() + "/v1/accounts/changes?since=0&wait=60")
		if err != nil {
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	select {
	case code := <-polled:
		t.Fatalf("poll returned before Close: %d", code)
	case <-time.After(200 * time.Millisecond):
	}
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %s", d)
	}
	if code := <-polled; code != http.StatusOK {
		t.Errorf("waiting poll got %d, want 200", code)
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	m := NewMain()
	m.Stderr = io.Discard
	m.Listen, m.DBPath = "127.0.0.1:0", filepath.Join(dir, "missing", "registrar.db")
	if err := m.Run(context.Background()); err == nil {
		m.Close()
		t.Error("Run with a database in a missing directory succeeded")
	}

	db := filepath.Join(dir, "registrar.db")
	m = NewMain()
	m.Stderr = io.Discard
	m.Listen, m.DBPath = "127.0.0.1:-1", db
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		m.Close()
		t.Errorf("Run on a bad address: %v", err)
	}
	// The failed Run released the database.
	s, err := registrar.OpenBolt(db)
	if err != nil {
		t.Fatalf("database still held after a failed Run: %v", err)
	}
	defer s.Close()
	// A second registrar on a file in use says so.
	m = NewMain()
	m.Stderr = io.Discard
	m.Listen, m.DBPath = "127.0.0.1:0", db
	if err := m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "is in use by another process") {
		if err == nil {
			m.Close()
		}
		t.Errorf("Run on a database in use: %v", err)
	}
}

// TestSignal runs the program as a process and stops it with SIGTERM.
func TestSignal(t *testing.T) {
	db := filepath.Join(t.TempDir(), "registrar.db")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "RMB_REGISTRAR_MAIN_ARGS=--listen 127.0.0.1:0 --db "+db)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()

			addr := make(chan string, 1)
			go func() {
				re := regexp.MustCompile(`listening addr=(\S+)`)
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					if m := re.FindStringSubmatch(sc.Text()); m != nil {
						addr <- m[1]
					}
				}
			}()
			var a string
			select {
			case a = <-addr:
			case <-time.After(10 * time.Second):
				t.Fatal("no listening line")
			}
			resp, err := http.Get("http://" + a + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()

			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("exit after %s: %v, want status 0", sig, err)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("still running 15s after %s", sig)
			}
		})
	}
}
