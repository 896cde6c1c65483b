package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rmb-go/rmb/internal/wsframe"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/relay"
)

// IdleOptions configure an idle-session run.
type IdleOptions struct {
	// Sessions is the number of authenticated sessions to open. Default
	// 10000.
	Sessions int
	// Twins the sessions are spread over (each session is its own sid).
	// Default 100.
	Twins int
	// ClientCommand starts the process that holds the client ends: it is
	// given the arguments for RunIdleClients and must print "ready" on
	// stdout once every session is open, and exit when its stdin closes.
	// Running the clients in another process keeps their memory out of the
	// relay's. Required.
	ClientCommand func(args []string) *exec.Cmd
	// Progress receives status lines; nil for none.
	Progress io.Writer
}

// IdleResult is what an idle run measured: the relay process's memory
// with the sessions open minus before, after a GC.
type IdleResult struct {
	Sessions int
	// Per session, in bytes: live heap, goroutine stacks, heap+stacks, and
	// the process's resident set (VmRSS).
	HeapPerSession, StackPerSession, GoPerSession, RSSPerSession float64
	GoroutinesPerSession                                         float64
	ConnectTime                                                  time.Duration
}

func (r *IdleResult) String() string {
	return fmt.Sprintf("%d idle sessions: heap %.0f B + stacks %.0f B = %.0f B per session (%.1f KiB); RSS %.0f B per session (%.1f KiB); %.2f goroutines per session; connected in %s",
		r.Sessions, r.HeapPerSession, r.StackPerSession, r.GoPerSession, r.GoPerSession/1024, r.RSSPerSession, r.RSSPerSession/1024,
		r.GoroutinesPerSession, r.ConnectTime.Round(time.Millisecond))
}

type memSnapshot struct {
	heap, stack, rss uint64
	goroutines       int
}

func snapshot() memSnapshot {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnapshot{heap: ms.HeapAlloc, stack: ms.StackInuse, rss: vmRSS(), goroutines: runtime.NumGoroutine()}
}

// vmRSS returns the process's resident set in bytes (Linux), or 0.
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func idleSeed(i int) []byte {
	seed := make([]byte, 32)
	copy(seed, fmt.Sprintf("rmb-idle-%d", i))
	return seed
}

// RunIdle starts an in-process registrar and relay (default options),
// opens Sessions authenticated sessions from a client process and reports
// the relay's memory per idle session.
func RunIdle(ctx context.Context, o IdleOptions) (*IdleResult, error) {
	if o.Sessions <= 0 {
		o.Sessions = 10000
	}
	if o.Twins <= 0 {
		o.Twins = 100
	}
	if o.ClientCommand == nil {
		return nil, errors.New("bench: IdleOptions.ClientCommand is required")
	}
	RaiseFileLimit(uint64(o.Sessions) + 1024)
	// All sessions come from 127.0.0.1, up to a hundred per twin: lift
	// the relay's session bounds, which are not what is measured.
	st, err := startStack(relay.Options{MaxSessionsPerTwin: o.Sessions, MaxSessionsPerAddress: o.Sessions + 16})
	if err != nil {
		return nil, err
	}
	defer st.close()
	twins := make([]string, o.Twins)
	for i := range twins {
		id, err := identity.FromSeed(idleSeed(i), identity.Ed25519)
		if err != nil {
			return nil, err
		}
		t, err := st.reg.Register(ctx, id, []string{st.domain})
		if err != nil {
			return nil, fmt.Errorf("register bench twin: %w", err)
		}
		twins[i] = strconv.FormatUint(uint64(t.ID), 10)
		// Warm the relay's directory cache: lookups are not per session.
		if _, err := st.reg.Twin(ctx, t.ID); err != nil {
			return nil, err
		}
	}

	before := snapshot()
	cmd := o.ClientCommand([]string{"--url", "ws://" + st.domain + "/", "--twins", strings.Join(twins, ","),
		"--sessions", strconv.Itoa(o.Sessions)})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the client process: %w", err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		return nil, fmt.Errorf("client process: %q %v", line, err)
	}
	// Every session registered on the relay side too.
	for st.relay.Stats().Sessions < o.Sessions {
		if time.Since(start) > 5*time.Minute || ctx.Err() != nil {
			return nil, fmt.Errorf("only %d of %d sessions live", st.relay.Stats().Sessions, o.Sessions)
		}
		time.Sleep(10 * time.Millisecond)
	}
	connect := time.Since(start)
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "%d sessions live after %s; letting them idle...\n", o.Sessions, connect.Round(time.Millisecond))
	}
	time.Sleep(2 * time.Second)
	after := snapshot()
	n := float64(o.Sessions)
	d := func(a, b uint64) float64 { return (float64(a) - float64(b)) / n }
	res := &IdleResult{
		Sessions:             o.Sessions,
		HeapPerSession:       d(after.heap, before.heap),
		StackPerSession:      d(after.stack, before.stack),
		RSSPerSession:        d(after.rss, before.rss),
		GoroutinesPerSession: float64(after.goroutines-before.goroutines) / n,
		ConnectTime:          connect,
	}
	res.GoPerSession = res.HeapPerSession + res.StackPerSession
	return res, nil
}

// RunIdleClients is the client process of RunIdle: it opens sessions
// authenticated sessions to url, spread over twins (whose identities come
// from the same seeds as RunIdle's), prints "ready" to ready and holds them
// until done is closed or reaches EOF. The clients answer pings.
func RunIdleClients(ctx context.Context, url string, twins []uint32, sessions int, ready io.Writer, done io.Reader) error {
	RaiseFileLimit(uint64(sessions) + 1024)
	ids := make([]*identity.Identity, len(twins))
	for i := range ids {
		var err error
		if ids[i], err = identity.FromSeed(idleSeed(i), identity.Ed25519); err != nil {
			return err
		}
	}
	conns := make([]*wsframe.Conn, sessions)
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= sessions || firstErr.Load() != nil {
					return
				}
				t := i % len(twins)
				tok, err := identity.NewToken(ids[t], twins[t], "s"+strconv.Itoa(i), time.Now(), time.Hour)
				if err == nil {
					dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					conns[i], err = wsframe.Dial(dctx, url+"?"+tok, &wsframe.Options{ReadLimit: 64 << 10})
					cancel()
				}
				if err != nil {
					err = fmt.Errorf("session %d: %w", i, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	for _, c := range conns {
		go func() {
			for {
				if _, _, err := c.ReadMessage(nil); err != nil {
					return
				}
			}
		}()
	}
	fmt.Fprintln(ready, "ready")
	io.Copy(io.Discard, done)
	return nil
}
