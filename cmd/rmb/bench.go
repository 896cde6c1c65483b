package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rmb-go/rmb/internal/bench"
)

func init() {
	register("bench", "load tool: bench relay (forwarding), bench e2e (round trips through peers) or bench pubsub (topics)", benchCmd)
}

func benchCmd(ctx context.Context, e *env, args []string) int {
	if len(args) > 0 && args[0] == "pubsub" {
		return benchPubSub(ctx, e, args[1:])
	}
	if len(args) > 0 && args[0] == "relay-clients" {
		return benchRelayClients(ctx, e, args[1:])
	}
	if len(args) == 0 || (args[0] != "relay" && args[0] != "e2e") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(e.stderr, "usage: rmb bench relay|e2e [--cpuprofile FILE] [--memprofile FILE] [flags], or rmb bench pubsub [flags]   (rmb bench relay --help for the flags)")
			return 0
		}
		fmt.Fprintln(e.stderr, "usage: rmb bench relay|e2e|pubsub [flags]   (rmb bench relay --help for the flags)")
		return 2
	}
	// --cpuprofile FILE and --memprofile FILE work for both modes; take
	// them out before the mode's own flags are parsed.
	rest, profile, memprofile := args[1:], "", ""
	for i := 0; i < len(rest); i++ {
		a := strings.TrimPrefix(rest[i], "-")
		if a != "-cpuprofile" && a != "-memprofile" {
			continue
		}
		if i+1 == len(rest) {
			return e.errorf("%s needs a file name", rest[i])
		}
		if a == "-cpuprofile" {
			profile = rest[i+1]
		} else {
			memprofile = rest[i+1]
		}
		rest = append(rest[:i:i], rest[i+2:]...)
		i--
	}
	if memprofile != "" {
		// Allocations of the whole run, set-up included.
		defer func() {
			if f, err := os.Create(memprofile); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	if profile != "" && args[0] == "relay" {
		// Only the send phase: signing the envelopes up front would
		// dominate the profile.
		return benchRelay(ctx, e, rest, profile)
	}
	if profile != "" && args[0] == "e2e" {
		// Only the bus phase.
		return benchE2E(ctx, e, rest, profile)
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return e.errorf("%v", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return e.errorf("cpu profile: %v", err)
		}
		defer pprof.StopCPUProfile()
	}
	if args[0] == "relay" {
		return benchRelay(ctx, e, rest, "")
	}
	return benchE2E(ctx, e, rest, "")
}

// progressTo is where the load tool's once-a-second status line goes: w
// when it is a terminal, nowhere otherwise (the line is redrawn with
// escape codes, which would litter a log or a pipe).
func progressTo(w io.Writer) io.Writer {
	if isTerminal(w) {
		return w
	}
	return nil
}

// profilePhase returns a phase hook that CPU-profiles the phase into
// file; *errp receives a failure to start.
func profilePhase(file string, errp *error) func() func() {
	return func() func() {
		f, err := os.Create(file)
		if err != nil {
			*errp = err
			return func() {}
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			*errp = err
			return func() {}
		}
		return func() {
			pprof.StopCPUProfile()
			f.Close()
		}
	}
}

func benchRelay(ctx context.Context, e *env, args []string, profile string) int {
	fs := newFlags(e, "bench relay", "[--pairs 16] [--messages 20000] [--size 256] [--rate 0] [--window 1000] [--coder-clients] [--json] | --idle N")
	var o bench.RelayOptions
	fs.IntVar(&o.Pairs, "pairs", 16, "sender connections, and as many receivers")
	fs.IntVar(&o.Messages, "messages", 20000, "envelopes per sender")
	fs.IntVar(&o.PayloadSize, "size", 256, "payload bytes")
	fs.IntVar(&o.Rate, "rate", 0, "total envelopes/s to send (0 = as fast as possible)")
	fs.IntVar(&o.Window, "window", 1000, "most envelopes in flight per sender (-1 = unbounded)")
	fs.BoolVar(&o.CoderClients, "coder-clients", false, "load clients use coder/websocket (a write syscall per envelope) instead of wsframe")
	fs.IntVar(&o.Instances, "instances", 1, "relay instances: above 1, a cluster on a real NATS cluster (nats-server) and redis-server")
	fs.StringVar((*string)(&o.Placement), "placement", "mixed", "with --instances: pairs on one instance (same), across two (cross), or half each (mixed)")
	idle := fs.Int("idle", 0, "instead of forwarding, open this many idle authenticated sessions (from a child process) and report the relay's memory per session")
	asJSON := fs.Bool("json", false, "print the result as JSON: snake_case keys, durations in microseconds under keys ending in _us (no progress line)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *idle > 0 {
		return benchIdle(ctx, e, *idle, *asJSON)
	}
	if !*asJSON {
		o.Progress = progressTo(e.stderr)
		fmt.Fprintf(e.stderr, "signing %d envelopes, then sending through an in-process relay on 127.0.0.1...\n", o.Pairs*o.Messages)
	}
	var profErr error
	if profile != "" {
		o.SendPhase = profilePhase(profile, &profErr)
	}
	res, err := bench.RunRelay(ctx, o)
	if err != nil {
		return e.errorf("bench relay: %v", err)
	}
	if profErr != nil {
		return e.errorf("cpu profile: %v", profErr)
	}
	if *asJSON {
		return printJSON(e, benchJSON(res))
	}
	fmt.Fprintf(e.stdout, `
  connections     %d senders + %d receivers
  window          %d in flight per sender
  payload         %d B
  sent            %d
  delivered       %d
  lost            %d
  duplicates      %d
  elapsed         %s
  throughput      %.0f envelopes/s
  latency         %s
`, res.Pairs, res.Pairs, res.Window, res.PayloadSize, res.Sent, res.Delivered, res.Lost, res.Duplicates,
		res.Elapsed.Round(time.Millisecond), res.PerSecond, res.Latency)
	fmt.Fprint(e.stdout, res.ClusterSummary())
	fmt.Fprintf(e.stdout, "  relay routed    %v\n", res.RelayRouted)
	if len(res.RelayDrops) > 0 {
		fmt.Fprintf(e.stdout, "  relay drops     %v\n", res.RelayDrops)
	}
	if res.Lost > 0 {
		return 1
	}
	return 0
}

func benchE2E(ctx context.Context, e *env, args []string, profile string) int {
	fs := newFlags(e, "bench e2e", "[--callers 32] [--duration 10s] [--size 256] [--unix] [--peer-bin PATH] [--no-plain] [--json]")
	var o bench.E2EOptions
	fs.IntVar(&o.Callers, "callers", 32, "concurrent callers")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "length of each measured phase")
	fs.IntVar(&o.PayloadSize, "size", 256, "payload bytes")
	fs.IntVar(&o.Workers, "workers", 32, "service workers behind the remote peer")
	fs.BoolVar(&o.NoPlain, "no-plain", false, "skip the plain Redis request/reply phase")
	fs.BoolVar(&o.UnixSocket, "unix", false, "connect to Redis by a unix socket instead of TCP (both phases)")
	peerBin := fs.String("peer-bin", "", "run the two peers as processes of this rmb-peer binary instead of in-process")
	asJSON := fs.Bool("json", false, "print the result as JSON: snake_case keys, durations in microseconds under keys ending in _us (no progress line)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !*asJSON {
		o.Progress = progressTo(e.stderr)
		fmt.Fprintln(e.stderr, "starting redis-server, a registrar, a relay and two peers on 127.0.0.1...")
	}
	if *peerBin != "" {
		o.PeerCommand = func(ctx context.Context, args []string) *exec.Cmd {
			cmd := exec.CommandContext(ctx, *peerBin, args...)
			// Gone with the bench, however it ends.
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			return cmd
		}
	}
	var profErr error
	if profile != "" {
		o.BusPhase = profilePhase(profile, &profErr)
	}
	res, err := bench.RunE2E(ctx, o)
	if err != nil {
		return e.errorf("bench e2e: %v", err)
	}
	if profErr != nil {
		return e.errorf("cpu profile: %v", profErr)
	}
	if *asJSON {
		return printJSON(e, benchJSON(res))
	}
	fmt.Fprintf(e.stdout, "\n  %d callers, %d B payload, e2e encryption on\n\n  %-12s %14s %7s %10s %10s %10s %10s\n",
		res.Callers, res.PayloadSize, "", "round trips/s", "errors", "p50", "p90", "p99", "max")
	for _, p := range []bench.E2EPhase{res.Bus, res.PlainRedis} {
		if p.Name == "" {
			continue
		}
		fmt.Fprintf(e.stdout, "  %-12s %14.0f %7d %10s %10s %10s %10s\n", p.Name, p.PerSecond, p.Errors,
			roundDur(p.Latency.P50), roundDur(p.Latency.P90), roundDur(p.Latency.P99), roundDur(p.Latency.Max))
	}
	fmt.Fprintf(e.stdout, "\n  per round trip   %14s %14s %14s %14s   %s\n", "CPU, machine", "CPU, this proc", "CPU, redis", "redis commands", "by command (redis time)")
	for _, p := range []bench.E2EPhase{res.Bus, res.PlainRedis} {
		if p.Name == "" {
			continue
		}
		fmt.Fprintf(e.stdout, "  %-16s %14s %14s %14s %14.2f   %s\n", p.Name, p.Cost.MachineCPU.Round(time.Microsecond), p.Cost.ProcessCPU.Round(time.Microsecond),
			p.Cost.RedisCPU.Round(time.Microsecond), p.Cost.RedisCommands, byCommand(p.Cost.ByCommand, p.Cost.CommandTime))
	}
	for _, p := range []bench.E2EPhase{res.Bus, res.PlainRedis} {
		if p.RedisReads > 0 {
			fmt.Fprintf(e.stdout, "\n  %s: Redis reads (round trips of all clients) per round trip: %.2f", p.Name, p.RedisReads)
		}
	}
	if res.Bus.PeerCPU > 0 {
		fmt.Fprintf(e.stdout, "\n  bus: CPU of the two peer processes per round trip: %s, their context switches: %.2f",
			res.Bus.PeerCPU.Round(time.Microsecond), res.Bus.PeerSwitches)
	}
	fmt.Fprintln(e.stdout)
	if res.Bus.PeerRedisTrips > 0 {
		fmt.Fprintf(e.stdout, "\n  Redis round trips of both peers per bus round trip: %.2f\n", res.Bus.PeerRedisTrips)
	}
	if res.Bus.Errors > 0 {
		return 1
	}
	return 0
}

// byCommand lists per-round-trip command counts and their Redis time,
// most first.
func byCommand(m map[string]float64, t map[string]time.Duration) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		return m[names[i]] > m[names[j]] || m[names[i]] == m[names[j]] && names[i] < names[j]
	})
	var b strings.Builder
	for _, k := range names {
		if m[k] < 0.005 {
			continue
		}
		fmt.Fprintf(&b, "%s %.2f (%s)  ", k, m[k], t[k].Round(100*time.Nanosecond))
	}
	return strings.TrimSpace(b.String())
}

func roundDur(d time.Duration) time.Duration {
	if d > time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// benchIdle measures the relay's memory per idle session; the client ends
// live in a child process (rmb bench relay-clients).
func benchIdle(ctx context.Context, e *env, sessions int, asJSON bool) int {
	exe, err := os.Executable()
	if err != nil {
		return e.errorf("%v", err)
	}
	o := bench.IdleOptions{Sessions: sessions, ClientCommand: func(args []string) *exec.Cmd {
		return exec.CommandContext(ctx, exe, append([]string{"bench", "relay-clients"}, args...)...)
	}}
	if !asJSON {
		o.Progress = e.stderr
		fmt.Fprintf(e.stderr, "opening %d sessions to an in-process relay from a child process...\n", sessions)
	}
	res, err := bench.RunIdle(ctx, o)
	if err != nil {
		return e.errorf("bench relay --idle: %v", err)
	}
	if asJSON {
		return printJSON(e, benchJSON(res))
	}
	fmt.Fprintf(e.stdout, `
  idle sessions   %d (connected in %s)
  heap            %.0f B per session
  stacks          %.0f B per session
  heap + stacks   %.1f KiB per session
  resident (RSS)  %.1f KiB per session
  goroutines      %.2f per session
`, res.Sessions, res.ConnectTime.Round(time.Millisecond), res.HeapPerSession, res.StackPerSession,
		res.GoPerSession/1024, res.RSSPerSession/1024, res.GoroutinesPerSession)
	return 0
}

// benchRelayClients is the child process of bench relay --idle.
func benchRelayClients(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "bench relay-clients", "--url ws://HOST/ --twins ID,ID,... --sessions N")
	url := fs.String("url", "", "relay URL")
	twinList := fs.String("twins", "", "comma-separated twin ids (registered by the parent)")
	sessions := fs.Int("sessions", 0, "sessions to open")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	var twins []uint32
	for f := range strings.SplitSeq(*twinList, ",") {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return e.errorf("--twins: %v", err)
		}
		twins = append(twins, uint32(n))
	}
	if err := bench.RunIdleClients(ctx, *url, twins, *sessions, e.stdout, os.Stdin); err != nil {
		return e.errorf("relay-clients: %v", err)
	}
	return 0
}
