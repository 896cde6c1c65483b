package peer_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// examples/python/pubsub.py subscribes through one peer's Redis and
// publishes through another's.
func TestTopicPython(t *testing.T) {
	py := python(t)
	script, err := filepath.Abs("../../examples/python/pubsub.py")
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, 1)
	owner, subscriber := s.newPeer(), s.newPeer()
	url := func(p *testPeer) string {
		return fmt.Sprintf("redis://%s/%d", s.redis.Addr, p.opts.Redis.Options().DB)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := &lockedBuffer{}
	sub := exec.CommandContext(ctx, py, script, "subscribe", "--redis", url(subscriber), "--twin", fmt.Sprint(owner.Twin()),
		"--topic", "alerts/+", "--count", "1")
	sub.Stdout, sub.Stderr = out, out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		if len(owner.Leases()) != 1 {
			return fmt.Errorf("no lease yet; pubsub.py said %q", out.String())
		}
		return nil
	})
	pub, err := exec.CommandContext(ctx, py, script, "publish", "--redis", url(owner), "--topic", "alerts/disk", "--data", "97% full").CombinedOutput()
	if err != nil || strings.TrimSpace(string(pub)) != "1 1" {
		t.Fatalf("publish: %v %q", err, pub)
	}
	if err := sub.Wait(); err != nil {
		t.Fatalf("subscribe: %v: %s", err, out.String())
	}
	if want := fmt.Sprintf("%d alerts/disk 97%% full", owner.Twin()); strings.TrimSpace(out.String()) != want {
		t.Errorf("subscribe printed %q, want %q", out.String(), want)
	}
	waitFor(t, 30*time.Second, func() error {
		if l := owner.Leases(); len(l) != 0 {
			return fmt.Errorf("leases %v after pubsub.py exited", l)
		}
		return nil
	})
	// A refusal is printed with its code.
	bad, err := exec.CommandContext(ctx, py, script, "publish", "--redis", url(owner), "--topic", "alerts/#").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(bad), "error 101") {
		t.Errorf("publish alerts/#: %v %q", err, bad)
	}
}
