package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// relayBin builds rmb-relay once for the tests that run the binary.
func relayBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rmb-relay-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "rmb-relay")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("go build rmb-relay: %v", binErr)
	}
	return binPath
}

// runRelay runs the built binary to its end with args and extra
// variables, and returns its exit code and output.
func runRelay(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	case err != nil:
		t.Fatalf("rmb-relay %q: %v", args, err)
	}
	return 0, out.String(), errb.String()
}

// A registrar URL without a scheme fails at start, from the command line,
// the environment or the file alike, with the form wanted.
func TestBinaryRegistrarURL(t *testing.T) {
	file := filepath.Join(t.TempDir(), "relay.yaml")
	os.WriteFile(file, []byte("registrar: 127.0.0.1:8090\n"), 0o600)
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"-m", "a", "--registrar", "127.0.0.1:8080"}, `invalid value "127.0.0.1:8080" for flag -registrar: want a URL like http://127.0.0.1:8080`},
		{[]string{"RMB_REGISTRAR=localhost:8090"}, []string{"-m", "a"}, `$RMB_REGISTRAR: invalid value "localhost:8090" for --registrar: want a URL like http://localhost:8090`},
		{nil, []string{"-m", "a", "--config", file}, `invalid value "127.0.0.1:8090" for registrar: want a URL like http://127.0.0.1:8090`},
		{nil, []string{"-m", "a", "--registrar", "wss://reg.example"}, `scheme wss: want http or https, like http://reg.example`},
	} {
		code, _, stderr := runRelay(t, tc.env, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "first path segment") {
			t.Errorf("%v %q: exit %d, want 2 and %q:\n%s", tc.env, tc.args, code, tc.want, stderr)
		}
	}
}

// The Rust relay's spellings: -m a b, --limit COUNT SIZE, -l, -p, -r and
// -d repeated are ours too; its flags without a counterpart are refused
// with the flag to use instead, and kept out of --help.
func TestBinaryRustFlags(t *testing.T) {
	code, out, stderr := runRelay(t, nil, "-m", "a.example", "b.example", "--limit", "10", "1000", "-l", "127.0.0.1:0",
		"-p", "60", "-r", "redis://127.0.0.1:1", "-d", "-d", "--registrar", "http://r", "--print-config")
	for _, want := range []string{`domain: "a.example,b.example"  # flag`, `limit: "10"  # flag`, `limit-size: "1000"  # flag`,
		`listen: "127.0.0.1:0"  # flag`, `ranker-period: "1m0s"  # flag`, `redis: "redis://127.0.0.1:1"  # flag`, `debug: "2"  # flag`} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("Rust spellings: exit %d, --print-config lacks %q:\n%s%s", code, want, out, stderr)
		}
	}
	if _, out, _ := runRelay(t, nil, "-m", "a", "--registrar", "http://r", "-dd", "--print-config"); !strings.Contains(out, `debug: "2"`) {
		t.Errorf("-dd:\n%s", out)
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"--substrate", "wss://tfchain.grid.tf:443"}},
		{[]string{"-s", "wss://tfchain.grid.tf:443"}},
		{[]string{"--workers", "500"}},
		{[]string{"-u", "1000"}},
		{[]string{"--catchup-threshold", "600"}},
	} {
		code, _, stderr := runRelay(t, nil, append([]string{"-m", "a", "--registrar", "http://r"}, tc.args...)...)
		want := map[string]string{"substrate": "give --registrar URL", "s": "give --registrar URL", "workers": "--max-sessions-per-twin",
			"u": "--max-sessions-per-twin", "catchup-threshold": "change feed"}[strings.TrimLeft(tc.args[0], "-")]
		if code != 2 || !strings.Contains(stderr, want) {
			t.Errorf("%q: exit %d, want 2 and %q:\n%s", tc.args, code, want, stderr)
		}
	}
	if _, _, help := runRelay(t, nil, "--help"); strings.Contains(help, "-substrate") || strings.Contains(help, "\n  -dd") || !strings.Contains(help, "-registrar") {
		t.Errorf("--help:\n%s", help)
	}
}

// -dd logs at debug level with the source of each line.
func TestBinaryDebugTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBin(t), "-m", "a", "--registrar", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "-dd")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := wait.For(ctx, 30*time.Second, func() error {
		if !strings.Contains(stderr.String(), "msg=listening") {
			return errors.New("not listening yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, stderr.String())
	}
	var line string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "msg=listening") {
			line = l
		}
	}
	if !strings.Contains(line, "source=") || !strings.Contains(line, "main.go:") {
		t.Errorf("-dd: no source in %q", line)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
