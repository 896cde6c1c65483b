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
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// peerBin builds rmb-peer once for the tests that run the binary.
func peerBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rmb-peer-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "rmb-peer")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = errors.New(string(out))
		}
	})
	if binErr != nil {
		t.Fatalf("go build rmb-peer: %v", binErr)
	}
	return binPath
}

// runPeer runs the built binary to its end and returns its exit code and
// output.
func runPeer(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, peerBin(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	case err != nil:
		t.Fatalf("rmb-peer %q: %v", args, err)
	}
	return 0, out.String(), errb.String()
}

// Relay and registrar URLs without a scheme (or with the wrong one) fail
// at start with the form wanted, from flags, variables and the file.
func TestBinaryURLs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "peer.yaml")
	os.WriteFile(file, []byte("relay: [127.0.0.1:8080]\nregistrar: http://r\n"), 0o600)
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--relay", "127.0.0.1:8080", "--registrar", "http://r"}, `invalid value "127.0.0.1:8080" for flag -relay: want a URL like ws://127.0.0.1:8080`},
		{nil, []string{"--relay", "http://relay.example", "--registrar", "http://r"}, `scheme http: want ws or wss, like ws://relay.example`},
		{nil, []string{"--relay", "ws://r", "--registrar", "127.0.0.1:8090"}, `invalid value "127.0.0.1:8090" for flag -registrar: want a URL like http://127.0.0.1:8090`},
		{[]string{"RMB_REGISTRAR=localhost:8090"}, []string{"--relay", "ws://r"}, `$RMB_REGISTRAR: invalid value "localhost:8090" for --registrar: want a URL like http://localhost:8090`},
		{[]string{"RMB_RELAY=relay.example:443"}, []string{"--registrar", "http://r"}, `$RMB_RELAY: invalid value "relay.example:443" for --relay: want a URL like ws://relay.example:443`},
		{nil, []string{"--config", file}, `invalid value "127.0.0.1:8080" for relay: want a URL like ws://127.0.0.1:8080`},
	} {
		code, _, stderr := runPeer(t, tc.env, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "first path segment") {
			t.Errorf("%v %q: exit %d, want 2 and %q:\n%s", tc.env, tc.args, code, tc.want, stderr)
		}
	}
}

// The Rust peer's spellings: --relay a b, --seed and --mnemonics, -d
// repeated; --substrate and --uploads are refused with what to do.
func TestBinaryRustFlags(t *testing.T) {
	for _, secret := range []string{"--seed", "--mnemonics", "-m"} {
		code, out, stderr := runPeer(t, nil, "--relay", "ws://a.example", "wss://b.example", secret, "0x1234", "-d", "-d",
			"--registrar", "http://r", "--print-config")
		for _, want := range []string{`relay: "ws://a.example,wss://b.example"  # flag`, `debug: "2"  # flag`, `mnemonic: "xxxxx"  # flag`} {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("%s: exit %d, --print-config lacks %q:\n%s%s", secret, code, want, out, stderr)
			}
		}
	}
	if _, out, _ := runPeer(t, nil, "--relay", "ws://a", "--registrar", "http://r", "-dd", "--print-config"); !strings.Contains(out, `debug: "2"`) {
		t.Errorf("-dd:\n%s", out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--substrate", "wss://tfchain.grid.tf:443"}, "give --registrar URL"},
		{[]string{"-s", "wss://tfchain.grid.tf:443"}, "give --registrar URL"},
		{[]string{"--uploads", "/tmp"}, "does not accept uploads"},
	} {
		code, _, stderr := runPeer(t, nil, append([]string{"--relay", "ws://a", "--registrar", "http://r"}, tc.args...)...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, want 2 and %q:\n%s", tc.args, code, tc.want, stderr)
		}
	}
	if _, _, help := runPeer(t, nil, "--help"); strings.Contains(help, "-substrate") || strings.Contains(help, "\n  -dd") || !strings.Contains(help, "-seed") {
		t.Errorf("--help:\n%s", help)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
