package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/test/harness"
)

// peerStack starts a registrar, a relay and a peer (the binaries TestMain
// built) on a fresh Redis, and returns the peer; calls to its own twin
// come back to services on the same Redis.
func peerStack(t *testing.T, ctx context.Context) *harness.Peer {
	t.Helper()
	dir := filepath.Dir(rmbBin)
	bins := &harness.Bins{Registrar: filepath.Join(dir, "rmb-registrar"), Relay: filepath.Join(dir, "rmb-relay"), Peer: filepath.Join(dir, "rmb-peer")}
	c := harness.NewCluster(t.TempDir(), bins)
	t.Cleanup(c.Close)
	rs, err := c.Redis(false)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := c.StartRegistrar(ctx)
	if err != nil {
		t.Fatalf("registrar: %v\n%s", err, c.Logs(20))
	}
	relay, err := c.StartRelay(ctx, reg, harness.RelayOptions{})
	if err != nil {
		t.Fatalf("relay: %v\n%s", err, c.Logs(20))
	}
	p, err := c.StartPeer(ctx, "peer", reg, rs.URL(), relay)
	if err != nil {
		t.Fatalf("peer: %v\n%s", err, c.Logs(20))
	}
	return p
}

// startServe runs rmb serve with args until the test ends, and waits
// until it serves.
func startServe(t *testing.T, ctx context.Context, args ...string) *lockedBuffer {
	t.Helper()
	cmd := exec.CommandContext(ctx, rmbBin, append([]string{"serve"}, args...)...)
	var out, errs lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := wait.For(ctx, 30*time.Second, func() error {
		if !strings.Contains(errs.String(), "serving") {
			return fmt.Errorf("rmb serve has not started: %s", errs.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return &out
}

// rmb serve --exec answers with a command's output through a real peer,
// relay and registrar: stdout is the answer, a failure is an error answer
// with stderr's first line, a slow command is cut at --exec-timeout and a
// long answer at --exec-max-output. rmb call --json adds the payload as
// text, --latency summarizes repeated calls, and a call to a command
// nobody serves gets a hint.
func TestServeExecThroughPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p := peerStack(t, ctx)
	dst := itoa(p.Twin)
	startServe(t, ctx, "--redis", p.RedisURL, "--cmd", "upper", "--exec", "tr a-z A-Z")
	startServe(t, ctx, "--redis", p.RedisURL, "--cmd", "fail", "--exec", "echo 'no such thing' >&2; echo more >&2; exit 3")
	startServe(t, ctx, "--redis", p.RedisURL, "--cmd", "slow", "--exec", "sleep 60", "--exec-timeout", "1s")
	startServe(t, ctx, "--redis", p.RedisURL, "--cmd", "big", "--exec", "yes", "--exec-max-output", "1000")
	startServe(t, ctx, "--redis", p.RedisURL, "--cmd", "bin", "--exec", "printf '\\001\\002\\377'")

	call := func(args ...string) result {
		return rmb(t, nil, append([]string{"call", "--redis", p.RedisURL, "--dst", dst, "--ttl", "20"}, args...)...)
	}
	if r := call("--cmd", "upper", "--data", "hello rmb"); r.code != 0 || strings.TrimSpace(r.stdout) != "HELLO RMB" {
		t.Errorf("--exec tr: %+v", r)
	}
	if r := call("--cmd", "fail"); r.code != 1 || !strings.Contains(r.stdout, "error 500: exit status 3: no such thing") || strings.Contains(r.stdout, "more") {
		t.Errorf("--exec exit 3: %+v", r)
	}
	if r := call("--cmd", "slow"); r.code != 1 || !strings.Contains(r.stdout, "error 504: the command took longer than 1s") {
		t.Errorf("--exec sleep past --exec-timeout: %+v", r)
	}
	if r := call("--cmd", "big"); r.code != 1 || !strings.Contains(r.stdout, "longer than 1000 bytes") {
		t.Errorf("--exec yes past --exec-max-output: %+v", r)
	}

	// --json: text payloads also decoded, others only as dat.
	var got []map[string]any
	r := call("--cmd", "upper", "--data", "héllo\n", "--json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got) != 1 || got[0]["text"] != "HéLLO\n" || got[0]["dat"] != "SMOpTExPCg==" {
		t.Errorf("--json of text: %+v", r)
	}
	got = nil
	r = call("--cmd", "bin", "--json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got) != 1 || got[0]["text"] != nil || got[0]["dat"] != "AQL/" {
		t.Errorf("--json of binary: %+v", r)
	}

	// --latency: a summary line; with --json, a summary object.
	r = call("--cmd", "upper", "--data", "x", "--latency", "--count", "5", "--interval", "0")
	for _, want := range []string{"upper to " + dst + ": min ", ", avg ", ", max ", ", p50 ", ", p99 ", "(5 samples, 0 errors)"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("--latency lacks %q: %+v", want, r)
		}
	}
	if n := strings.Count(strings.TrimSpace(r.stdout), "\n"); n != 0 {
		t.Errorf("--latency printed %d lines, want 1: %q", n+1, r.stdout)
	}
	var sum latencySummary
	r = call("--cmd", "upper", "--latency", "--count", "3", "--interval", "0", "--json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &sum) != nil || sum.Samples != 3 || sum.Min <= 0 || sum.Min > sum.Avg || sum.Avg > sum.Max || sum.P99 > sum.Max {
		t.Errorf("--latency --json: %+v %+v", sum, r)
	}

	// Nothing serves "nobody" on this Redis: the request waits in
	// msgbus.nobody, and the call says so.
	r = call("--cmd", "nobody", "--ttl", "6")
	if r.code != 1 || !strings.Contains(r.stderr, "hint: 1 request(s) wait in msgbus.nobody on this Redis: nothing serves nobody here") ||
		strings.Contains(r.stderr, "msgbus.system.local") {
		t.Errorf("call to an unserved command: %+v", r)
	}
}

// A call on a Redis no peer reads: the request stays in
// msgbus.system.local, and the call says so.
func TestCallHintNoPeer(t *testing.T) {
	s := redistest.Start(t, nil)
	r := rmb(t, nil, "call", "--redis", s.URL(), "--dst", "5", "--cmd", "x", "--ttl", "5")
	if r.code != 1 || !strings.Contains(r.stderr, "hint: nothing has taken the request from msgbus.system.local for 3s: is an rmb-peer running on this Redis ("+s.URL()+")?") {
		t.Errorf("call without a peer: %+v", r)
	}
	if r := rmb(t, nil, "serve", "--redis", s.URL(), "--exec", "cat", "--exec-timeout", "0"); r.code != 2 {
		t.Errorf("--exec-timeout 0: %+v", r)
	}
}
