package bench

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/relay"
)

// E2EOptions configure a round-trip run. Zero values mean defaults.
type E2EOptions struct {
	// Callers is the number of concurrent callers. Default 32.
	Callers int
	// Duration of each measured phase. Default 10s.
	Duration time.Duration
	// PayloadSize in bytes. Default 256.
	PayloadSize int
	// Workers serving the command behind the remote peer. Default 32.
	Workers int
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
	// BusPhase, if set, is called as the bus phase starts; the function
	// it returns is called as the phase ends (to profile only that).
	BusPhase func() (end func())
	// NoPlain skips the plain Redis phase.
	NoPlain bool
	// UnixSocket connects every Redis client through a unix socket
	// instead of TCP on 127.0.0.1.
	UnixSocket bool
	// PeerCommand, if set, runs each peer as a process (rmb-peer) instead
	// of in this one: it returns the command for the given arguments
	// (exec.CommandContext with ctx); the secret goes in the environment.
	// The relay, the registrar and the bots stay in this process.
	PeerCommand func(ctx context.Context, args []string) *exec.Cmd
}

// E2EPhase is one measured phase.
type E2EPhase struct {
	Name       string
	RoundTrips int64
	Errors     int64
	PerSecond  float64
	Latency    Latency
	Cost       Cost
	// PeerRedisTrips is the Redis round trips (commands and pipelines)
	// both peers made, per round trip.
	PeerRedisTrips float64 `json:",omitempty"`
	// RedisReads is the reads redis-server made from its clients' sockets
	// per round trip (INFO stats total_reads_processed): about one per
	// command or pipeline any client sent, whatever it held, so the Redis
	// round trips of the phase (commands run by scripts and inside
	// MULTI/EXEC count as commands, not as reads).
	RedisReads float64 `json:",omitempty"`
	// PeerCPU is the CPU time (user and system) of the two peer
	// processes per round trip, and PeerSwitches their context switches
	// (voluntary and not: about one per time a thread slept and was woken)
	// per round trip; zero unless the peers run as processes
	// (E2EOptions.PeerCommand) on Linux.
	PeerCPU      time.Duration `json:",omitempty"`
	PeerSwitches float64       `json:",omitempty"`
}

// E2EResult compares the bus with plain Redis request/reply.
type E2EResult struct {
	Callers, PayloadSize int
	Bus                  E2EPhase // bot -> Redis -> peer -> relay -> peer -> Redis -> service, and back
	PlainRedis           E2EPhase // bot -> Redis -> service -> Redis -> bot, no bus
}

// RunE2E starts a private redis-server, an in-process registrar and relay,
// two peers with the Redis API (e2e encryption on: both twins have e2e
// keys), and an echo service behind the second peer. Callers push requests
// through the first peer's Redis exactly as bots do. Then the same callers
// and workers do plain Redis request/reply for comparison.
func RunE2E(ctx context.Context, o E2EOptions) (*E2EResult, error) {
	if o.Callers <= 0 {
		o.Callers = 32
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.PayloadSize <= 0 {
		o.PayloadSize = 256
	}
	if o.Workers <= 0 {
		o.Workers = 32
	}
	dir, err := os.MkdirTemp("", "rmb-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	rs, err := redistest.Run(dir, &redistest.Options{Socket: o.UnixSocket})
	if err != nil {
		return nil, err
	}
	defer rs.Stop()

	st, err := startStack(relay.Options{})
	if err != nil {
		return nil, err
	}
	defer st.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	rdbs := make([]*redis.Client, 2)
	peerTrips := &redistest.RoundTrips{}
	peers := make([]*peer.Peer, 2)
	var pwg sync.WaitGroup
	defer pwg.Wait()
	defer cancel()
	var twins [2]uint32
	var pids []int // of peer processes
	for i := range peers {
		seed := make([]byte, 32)
		copy(seed, fmt.Sprintf("rmb-bench-e2e-%d", i))
		id, err := identity.FromSeed(seed, identity.Ed25519)
		if err != nil {
			return nil, err
		}
		if o.PeerCommand != nil {
			cmd, twin, err := startPeerProcess(ctx, o, rs, st, i+1, seed, id)
			if cmd != nil {
				// Stopped (SIGINT) with ctx, and waited for on return.
				pwg.Go(func() { cmd.Wait() })
			}
			if err != nil {
				return nil, err
			}
			pids = append(pids, cmd.Process.Pid)
			twins[i] = twin
			continue
		}
		// The peer gets a client of its own, as it would in production,
		// speaking RESP2 as rmb-peer's does (cmd/peer RedisOptions); bots
		// and services below use other clients.
		rdbs[i] = redis.NewClient(redisOptions(rs, o, &redis.Options{DB: i + 1, Protocol: 2}))
		rdbs[i].AddHook(peerTrips)
		defer rdbs[i].Close()
		peers[i], err = peer.New(&peer.Options{
			Identity: id, Relays: []string{"ws://" + st.domain}, Registrar: st.reg,
			Redis: rdbs[i], Logger: quiet,
		})
		if err != nil {
			return nil, err
		}
		p := peers[i]
		pwg.Go(func() { p.Run(ctx) })
		select {
		case <-p.Ready():
		case <-time.After(20 * time.Second):
			return nil, errors.New("bench peer did not become ready in 20s")
		}
		twins[i] = p.Twin()
	}
	dst := twins[1]

	// The echo service behind peer 2.
	// Every blocking BRPOP holds a connection: size the pools for that.
	svcRedis := redis.NewClient(redisOptions(rs, o, &redis.Options{DB: 2, PoolSize: o.Workers + 4}))
	defer svcRedis.Close()
	botRedis := redis.NewClient(redisOptions(rs, o, &redis.Options{DB: 1, PoolSize: o.Callers + o.Workers + 4}))
	defer botRedis.Close()
	svc := redisapi.NewClient(svcRedis)
	for range o.Workers {
		pwg.Go(func() {
			svc.Serve(ctx, "bench.echo", func(_ context.Context, _ *redisapi.IncomingRequest, p []byte) ([]byte, error) { return p, nil }, nil)
		})
	}
	payload := make([]byte, o.PayloadSize)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	caller := redisapi.NewClient(botRedis)
	// Warm up: the registrar lookups and the e2e key derivation (and, for
	// peer processes, their relay sessions coming up).
	err = wait.For(ctx, 30*time.Second, func() error {
		_, err := caller.Call(ctx, []uint32{dst}, "bench.echo", payload, &redisapi.CallOptions{TTL: 5 * time.Second})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("warm-up call: %w", err)
	}

	res := &E2EResult{Callers: o.Callers, PayloadSize: o.PayloadSize}
	tripsBefore := peerTrips.N()
	procBefore := procCounters(pids)
	readsBefore := redisReads(ctx, botRedis)
	end := func() {}
	if o.BusPhase != nil {
		end = o.BusPhase()
	}
	res.Bus = measure(ctx, "bus", o, botRedis, func(ctx context.Context) error {
		out, err := caller.Call(ctx, []uint32{dst}, "bench.echo", payload, &redisapi.CallOptions{TTL: 30 * time.Second})
		if err == nil && out[0].Error != nil {
			err = out[0].Error
		}
		return err
	})
	end()
	procAfter := procCounters(pids)
	readsAfter := redisReads(ctx, botRedis)
	if n := res.Bus.RoundTrips; n > 0 {
		res.Bus.PeerRedisTrips = float64(peerTrips.N()-tripsBefore) / float64(n)
		res.Bus.RedisReads = float64(readsAfter-readsBefore) / float64(n)
		if len(pids) > 0 && procBefore.ok && procAfter.ok {
			res.Bus.PeerCPU = (procAfter.cpu - procBefore.cpu) / time.Duration(n)
			res.Bus.PeerSwitches = float64(procAfter.switches-procBefore.switches) / float64(n)
		}
	}
	if o.NoPlain {
		return res, nil
	}

	// Plain Redis request/reply on the same server, same payload, same
	// number of workers, and the same round trips as the bots above
	// (redisapi.Client): a caller pushes its request and waits for the
	// answer in one pipeline, a worker pushes an answer and waits for the
	// next request in one.
	plain := botRedis
	for range o.Workers {
		pwg.Go(func() {
			var reply []string // queue, body
			for ctx.Err() == nil {
				pipe := plain.Pipeline()
				if reply != nil {
					pipe.LPush(ctx, reply[0], reply[1])
					reply = nil
				}
				pop := pipe.BRPop(ctx, time.Second, "bench.plain")
				pipe.Exec(ctx)
				r, err := pop.Result()
				if err != nil {
					continue
				}
				reply = []string{r[1][:36], r[1][36:]}
			}
		})
	}
	res.PlainRedis = measure(ctx, "plain redis", o, botRedis, func(ctx context.Context) error {
		id := newReplyID()
		pipe := plain.Pipeline()
		push := pipe.LPush(ctx, "bench.plain", id+string(payload))
		pop := pipe.BRPop(ctx, 10*time.Second, id)
		pipe.Exec(ctx)
		if err := push.Err(); err != nil {
			return err
		}
		return pop.Err()
	})
	if n := res.PlainRedis.RoundTrips; n > 0 {
		res.PlainRedis.RedisReads = float64(redisReads(ctx, botRedis)-readsAfter) / float64(n)
	}
	return res, nil
}

// redisReads is redis-server's total_reads_processed (INFO stats), 0 when
// INFO fails.
func redisReads(ctx context.Context, rdb *redis.Client) int64 {
	s, err := rdb.Info(ctx, "stats").Result()
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_reads_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// procCount is the CPU time and context switches of some processes.
type procCount struct {
	cpu      time.Duration
	switches int64
	ok       bool
}

// procCounters sums, over pids, utime and stime of /proc/PID/stat and the
// context switches of their threads (/proc/PID/task/*/status; a thread
// that ended meanwhile takes its count with it); ok is false where /proc
// cannot be read.
func procCounters(pids []int) procCount {
	c := procCount{ok: true}
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return procCount{}
		}
		// The fields after the command name (in parentheses, which may
		// hold spaces): state is field 3, utime 14, stime 15.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			return procCount{}
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		c.cpu += time.Duration(ut+st) * (time.Second / 100) // USER_HZ
		// Per thread: the process's own status counts its first thread.
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return procCount{}
		}
		for _, t := range tasks {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
			if err != nil {
				continue // the thread is gone
			}
			for line := range strings.SplitSeq(string(status), "\n") {
				k, v, _ := strings.Cut(line, ":")
				if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					c.switches += n
				}
			}
		}
	}
	return c
}

// startPeerProcess starts peer n (Redis database n) as a process and
// returns it, and its twin once registered. The process is interrupted
// when ctx ends; the caller waits for it.
func startPeerProcess(ctx context.Context, o E2EOptions, rs *redistest.Server, st *stack, n int, seed []byte, id *identity.Identity) (*exec.Cmd, uint32, error) {
	url := fmt.Sprintf("redis://%s/%d", rs.Addr, n)
	if o.UnixSocket {
		url = fmt.Sprintf("unix://%s?db=%d", rs.Socket, n)
	}
	cmd := o.PeerCommand(ctx, []string{"--relay", "ws://" + st.domain, "--redis", url, "--registrar", st.regURL, "-k", "ed25519"})
	cmd.Env = append(os.Environ(), "RMB_MNEMONIC=0x"+hex.EncodeToString(seed))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("start peer %d: %w", n, err)
	}
	var twin uint32
	err := wait.For(ctx, 20*time.Second, func() error {
		t, err := st.reg.TwinByPublicKey(ctx, id.PublicKey())
		if err == nil {
			twin = t.ID
		}
		return err
	})
	if err != nil {
		return cmd, 0, fmt.Errorf("peer process %d did not register: %w", n, err)
	}
	return cmd, twin, nil
}

// redisOptions points ro at rs, by TCP or by its unix socket.
func redisOptions(rs *redistest.Server, o E2EOptions, ro *redis.Options) *redis.Options {
	ro.Addr = rs.Addr
	if o.UnixSocket {
		ro.Network, ro.Addr = "unix", rs.Socket
	}
	return ro
}

// measure runs o.Callers goroutines calling f for o.Duration. rdb is a
// client of the Redis server, for its counters.
func measure(ctx context.Context, name string, o E2EOptions, rdb *redis.Client, f func(context.Context) error) E2EPhase {
	var n, errs atomic.Int64
	meter := startCost(ctx, rdb)
	lats := make([][]time.Duration, o.Callers)
	stop := make(chan struct{})
	start := time.Now()
	go progress(o.Progress, stop, func(el time.Duration) string {
		return fmt.Sprintf("[%s] %s: %d round trips, %.0f/s", el, name, n.Load(), float64(n.Load())/time.Since(start).Seconds())
	})
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	for c := range o.Callers {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				t := time.Now()
				if err := f(ctx); err != nil {
					errs.Add(1)
					continue
				}
				lats[c] = append(lats[c], time.Since(t))
				n.Add(1)
			}
		})
	}
	wg.Wait()
	close(stop)
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return E2EPhase{Name: name, RoundTrips: n.Load(), Errors: errs.Load(), PerSecond: float64(n.Load()) / elapsed.Seconds(),
		Latency: summarize(all), Cost: meter.stop(ctx, n.Load())}
}

var replySeq atomic.Uint64

// newReplyID is a 36-character reply queue name, unique in this process.
func newReplyID() string {
	return fmt.Sprintf("bench.plain.reply.%018d", replySeq.Add(1))
}
