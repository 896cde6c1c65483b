package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
)

func init() {
	register("demo", "run a registrar, a relay, two peers and a calculator, and call it", demo)
}

// demoRun owns the processes and files of one demo.
type demoRun struct {
	e         *env
	bin       string
	dir       string
	redisAddr string // an existing Redis to use; "" starts one

	mu    sync.Mutex
	procs []*demoProc
}

type demoProc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func demo(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "demo", "[--bin DIR] [--keep]")
	self, _ := os.Executable()
	bin := fs.String("bin", filepath.Dir(self), "directory holding rmb-registrar, rmb-relay and rmb-peer")
	keep := fs.Bool("keep", os.Getenv("DEMO_KEEP") == "1", "stay up after the calls until Ctrl-C (also DEMO_KEEP=1)")
	redisAddr := fs.String("redis", "", "use this Redis (host:port; databases 14 and 15) instead of starting a private redis-server")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	dir, err := os.MkdirTemp("", "rmb-demo-")
	if err != nil {
		return e.errorf("%v", err)
	}
	d := &demoRun{e: e, bin: *bin, dir: dir, redisAddr: *redisAddr}
	defer d.cleanup()
	if err := d.run(ctx, *keep); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(e.stderr, "\ninterrupted; stopping everything the demo started")
			return 130
		}
		d.showLogs()
		return e.errorf("demo failed: %v", err)
	}
	return 0
}

func (d *demoRun) say(format string, args ...any) { fmt.Fprintf(d.e.stdout, format+"\n", args...) }

func (d *demoRun) run(ctx context.Context, keep bool) error {
	for _, b := range []string{"rmb-registrar", "rmb-relay", "rmb-peer"} {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			return fmt.Errorf("%s not found in %s: run `make build` first (make demo does)", b, d.bin)
		}
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	regAddr, relayAddr, redisAddr := ports[0], ports[1], ports[2]
	regURL := "http://" + regAddr
	dbA, dbB := 1, 2
	if d.redisAddr != "" {
		// Someone else's Redis: stay out of the usual databases.
		redisAddr, dbA, dbB = d.redisAddr, 14, 15
		d.say("▶ using the Redis at %s (databases %d and %d)", redisAddr, dbA, dbB)
	} else {
		redisBin, err := exec.LookPath("redis-server")
		if err != nil {
			return errors.New("redis-server not found: `make demo` installs it, or apt-get install redis-server, or give --redis HOST:PORT")
		}
		d.say("▶ starting redis-server on %s", redisAddr)
		_, port, _ := net.SplitHostPort(redisAddr)
		if err := d.start(ctx, "redis", nil, redisBin, "--port", port, "--bind", "127.0.0.1",
			"--dir", d.dir, "--save", "", "--appendonly", "no"); err != nil {
			return err
		}
	}
	_, redisPort, _ := net.SplitHostPort(redisAddr)
	rdbA := redis.NewClient(&redis.Options{Addr: redisAddr, DB: dbA})
	rdbB := redis.NewClient(&redis.Options{Addr: redisAddr, DB: dbB})
	defer rdbA.Close()
	defer rdbB.Close()
	if err := wait.For(ctx, 10*time.Second, func() error { return rdbA.Ping(ctx).Err() }); err != nil {
		return fmt.Errorf("redis at %s does not answer: %w", redisAddr, err)
	}

	d.say("▶ starting rmb-registrar on %s", regAddr)
	if err := d.start(ctx, "registrar", nil, filepath.Join(d.bin, "rmb-registrar"),
		"--listen", regAddr, "--db", filepath.Join(d.dir, "registrar.db")); err != nil {
		return err
	}
	if err := wait.HTTP(ctx, regURL+"/healthz", 15*time.Second); err != nil {
		return fmt.Errorf("registrar: %w", err)
	}

	d.say("▶ starting rmb-relay on %s", relayAddr)
	if err := d.start(ctx, "relay", nil, filepath.Join(d.bin, "rmb-relay"),
		"--listen", relayAddr, "--domain", relayAddr, "--registrar", regURL); err != nil {
		return err
	}
	if err := wait.HTTP(ctx, "http://"+relayAddr+"/healthz", 15*time.Second); err != nil {
		return fmt.Errorf("relay: %w", err)
	}

	reg := registrar.NewClient(regURL, nil)
	twins := make([]uint32, 2)
	for i, rdb := range []*redis.Client{rdbA, rdbB} {
		name := []string{"peer-a", "peer-b"}[i]
		m, err := identity.NewMnemonic()
		if err != nil {
			return err
		}
		id, err := identity.FromSecret(m, identity.Sr25519)
		if err != nil {
			return err
		}
		redisURL := fmt.Sprintf("redis://%s/%d", redisAddr, rdb.Options().DB)
		d.say("▶ starting rmb-peer %s (fresh sr25519 identity, Redis %s)", name, redisURL)
		// The secret goes through the environment, not the command line.
		if err := d.start(ctx, name, []string{"RMB_MNEMONIC=" + m}, filepath.Join(d.bin, "rmb-peer"),
			"--relay", "ws://"+relayAddr, "--redis", redisURL, "--registrar", regURL); err != nil {
			return err
		}
		err = wait.For(ctx, 20*time.Second, func() error {
			t, err := reg.TwinByPublicKey(ctx, id.PublicKey())
			if err == nil {
				twins[i] = t.ID
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s did not register: %w", name, err)
		}
		d.say("  %s registered as twin %d", name, twins[i])
	}

	d.say("▶ starting a calculator service behind peer-b (twin %d): calc.add, calc.mul, calc.div", twins[1])
	svcCtx, stopSvc := context.WithCancel(ctx)
	defer stopSvc()
	svc := redisapi.NewClient(rdbB)
	for _, op := range []string{"add", "mul", "div"} {
		go svc.Serve(svcCtx, "calc."+op, calculator(op), nil)
	}

	client := redisapi.NewClient(rdbA)
	// Both peers are registered, but their relay sessions may still be
	// coming up: wait until peer-b answers its built-in rmb.version.
	err = wait.For(ctx, 30*time.Second, func() error {
		out, err := client.Call(ctx, []uint32{twins[1]}, "rmb.version", nil, &redisapi.CallOptions{TTL: 3 * time.Second})
		if err == nil && out[0].Error != nil {
			err = out[0].Error
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("peer-b never answered rmb.version: %w", err)
	}
	calls := []struct{ cmd, data string }{
		{"calc.add", "[1,2]"},
		{"calc.mul", "[6,7]"},
		{"calc.div", "[1,0]"},
		{"rmb.version", ""},
	}
	d.say("\n▶ calls from peer-a (twin %d) to peer-b (twin %d) through the relay, end-to-end encrypted:", twins[0], twins[1])
	for _, c := range calls {
		start := time.Now()
		out, err := client.Call(ctx, []uint32{twins[1]}, c.cmd, []byte(c.data), &redisapi.CallOptions{TTL: 30 * time.Second})
		if err != nil {
			return fmt.Errorf("call %s: %w", c.cmd, err)
		}
		r := out[0]
		took := time.Since(start).Round(100 * time.Microsecond)
		if r.Error != nil {
			d.say("  %-12s %-6s → error %d: %s   (%s)", c.cmd, c.data, r.Error.Code, r.Error.Message, took)
			if c.cmd != "calc.div" {
				return fmt.Errorf("%s answered an error: %s", c.cmd, r.Error.Message)
			}
			continue
		}
		p, _ := r.Payload()
		d.say("  %-12s %-6s → %s   (from twin %s, %s)", c.cmd, c.data, p, r.Source, took)
	}
	d.say("\n✔ demo calls succeeded")
	if !keep {
		return nil
	}
	d.say(`
Everything stays up until Ctrl-C. Try, in another terminal:

  %[1]s/rmb call --redis redis://%[2]s/%[8]d --dst %[3]d --cmd calc.add --data '[40,2]'
  %[1]s/rmb whois --registrar %[4]s %[3]d
  %[1]s/rmb deadletter list --redis redis://%[2]s/%[8]d
  redis-cli -p %[5]s -n %[8]d lrange msgbus.system.deadletter 0 -1

Relay status page: http://%[6]s/   metrics: http://%[6]s/metrics
Logs: %[7]s`, d.bin, redisAddr, twins[1], regURL, redisPort, relayAddr, d.dir, dbA)
	<-ctx.Done()
	return nil
}

// calculator answers [a,b] with a op b.
func calculator(op string) redisapi.Handler {
	return func(ctx context.Context, req *redisapi.IncomingRequest, p []byte) ([]byte, error) {
		var args []float64
		if err := json.Unmarshal(p, &args); err != nil || len(args) != 2 {
			return nil, &redisapi.Error{Code: 400, Message: "want a JSON array of two numbers"}
		}
		var v float64
		switch op {
		case "add":
			v = args[0] + args[1]
		case "mul":
			v = args[0] * args[1]
		case "div":
			if args[1] == 0 {
				return nil, &redisapi.Error{Code: 400, Message: "division by zero"}
			}
			v = args[0] / args[1]
		}
		return json.Marshal(v)
	}
}

func (d *demoRun) start(ctx context.Context, name string, extraEnv []string, path string, args ...string) error {
	logPath := filepath.Join(d.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &demoProc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	return nil
}

// cleanup stops the processes in reverse order and removes the temp dir.
func (d *demoRun) cleanup() {
	d.mu.Lock()
	procs := d.procs
	d.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	os.RemoveAll(d.dir)
}

func (d *demoRun) showLogs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.procs {
		b, _ := os.ReadFile(p.log)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(d.e.stderr, "--- last lines of %s ---\n%s\n", p.name, strings.Join(lines, "\n"))
	}
}

func freePorts(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, "127.0.0.1:"+strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return out, nil
}
