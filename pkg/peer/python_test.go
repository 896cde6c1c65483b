package peer_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// python finds a python3 that can import redis (Debian's python3-redis
// lives under /usr/bin/python3, which may not be first on PATH). It fails
// the test when there is none.
func python(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, c := range []string{"/usr/bin/python3", "python3"} {
		bin, err := exec.LookPath(c)
		if err != nil {
			continue
		}
		tried = append(tried, bin)
		if exec.Command(bin, "-c", "import redis").Run() == nil {
			return bin
		}
	}
	t.Fatalf("no python3 with the redis module (tried %v): run `make test` or `apt-get install -y python3-redis`", tried)
	return ""
}

func TestPythonBot(t *testing.T) {
	py := python(t)
	script, err := filepath.Abs("../../examples/python/bot.py")
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, 1)
	client, service := s.newPeer(), s.newPeer()
	url := func(p *testPeer) string {
		return fmt.Sprintf("redis://%s/%d", s.redis.Addr, p.opts.Redis.Options().DB)
	}

	serveOut := &lockedBuffer{}
	srv := exec.Command(py, script, "serve", "--redis", url(service))
	srv.Stdout, srv.Stderr = serveOut, serveOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-done
		}
	})

	run := func(args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, py, append([]string{script, "call", "--redis", url(client),
			"--dst", fmt.Sprint(service.Twin())}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("bot call: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out)), code
	}
	want := fmt.Sprint(service.Twin())
	if out, code := run("calc.add", "1", "2", "3"); code != 0 || out != want+" 6" {
		t.Fatalf("calc.add: exit %d, output %q (service: %s)", code, out, serveOut.String())
	}
	if out, code := run("calc.mul", "4", "2.5"); code != 0 || out != want+" 10.0" {
		t.Fatalf("calc.mul: exit %d, output %q", code, out)
	}
	if out, code := run("calc.div", "1", "0"); code != 1 || out != want+" error 400 division by zero" {
		t.Fatalf("calc.div: exit %d, output %q", code, out)
	}
}

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
