package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/bench"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

func init() {
	register("call", "call a command on one or more twins through the local peer", call)
	register("serve", "serve a command through the local peer (echo by default)", serve)
}

const defaultRedis = "redis://127.0.0.1:6379"

func redisClient(url string) (*redis.Client, error) {
	o, err := redisapi.ParseURL(url)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(o), nil
}

func parseTwins(s string) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a twin id", f)
		}
		out = append(out, uint32(n))
	}
	if len(out) == 0 {
		return nil, errors.New("no destination twin")
	}
	return out, nil
}

func call(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "call", "--dst TWIN[,TWIN...] --cmd COMMAND [--data JSON] [--ttl 60] [--count 1 --interval 1s | --latency] [--json] [--redis URL]")
	dst := fs.String("dst", "", "destination twin ids, comma separated (required)")
	cmd := fs.String("cmd", "", "command to call, e.g. calc.add (required)")
	data := fs.String("data", "", "payload, sent as is")
	ttl := &ttlFlag{d: 60 * time.Second}
	fs.Var(ttl, "ttl", "time to live of the request, seconds (30) or a duration (90s), 1s to 30m; the call waits this long (plus 5s for the peer's timeout answer)")
	sid := fs.String("session", "", "destination session id")
	tags := fs.String("tags", "", "envelope tags, e.g. fail-fast")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	asJSON := fs.Bool("json", false, "print the responses as JSON; a payload that is text is also given decoded, as \"text\"")
	count := fs.Int("count", 1, "make this many calls, each printed with its round-trip time, then a summary")
	interval := fs.Duration("interval", time.Second, "with --count: time from the start of one call to the start of the next; with --latency: pause between calls (default there 100ms)")
	latency := fs.Bool("latency", false, "call again and again, as redis-cli --latency, and print min, avg, max, p50 and p99 of the round trips (until Ctrl-C, or --count calls)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *latency {
		if !given["count"] {
			*count = 0 // until Ctrl-C
		}
		if !given["interval"] {
			*interval = 100 * time.Millisecond
		}
	}
	twins, err := parseTwins(*dst)
	if err == nil && *cmd == "" {
		err = errors.New("--cmd is required")
	}
	if err == nil && *count < 1 && !*latency {
		err = fmt.Errorf("--count %d: want 1 or more calls", *count)
	}
	if err == nil && *count < 0 {
		err = fmt.Errorf("--count %d is negative", *count)
	}
	if err == nil && *interval < 0 {
		err = fmt.Errorf("--interval %s is negative", *interval)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "rmb call: %v\n", err)
		fs.Usage()
		return 2
	}
	ttlSecs, note, err := ttl.check("ttl")
	if err != nil {
		fmt.Fprintf(e.stderr, "rmb call: %v\n", err)
		return 2
	}
	if note != "" {
		fmt.Fprintf(e.stderr, "rmb call: %s\n", note)
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("%v", err)
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return e.errorf("cannot reach the peer's Redis at %s: %v", redisapi.RedactURL(*redisURL), err)
	}
	c := &caller{e: e, client: redisapi.NewClient(rdb), twins: twins, cmd: *cmd, data: []byte(*data), asJSON: *asJSON,
		opts: &redisapi.CallOptions{TTL: time.Duration(ttlSecs) * time.Second, Session: *sid, Tags: *tags},
		hints: &hints{rdb: rdb, where: redisapi.RedactURL(*redisURL), cmd: *cmd, after: hintAfter,
			printf: func(format string, args ...any) { fmt.Fprintf(e.stderr, "rmb call: "+format+"\n", args...) }}}
	if *latency {
		return c.latency(ctx, *count, *interval)
	}
	if *count == 1 {
		if c.once(ctx, 0) {
			return 0
		}
		return 1
	}
	return c.repeat(ctx, *count, *interval)
}

// caller makes the calls of one rmb call.
type caller struct {
	e      *env
	client *redisapi.Client
	twins  []uint32
	cmd    string
	data   []byte
	opts   *redisapi.CallOptions
	asJSON bool
	hints  *hints
}

// once makes call number seq (0 when there is only one) and prints its
// answers, prefixed with the number and followed by the round-trip time
// when seq > 0. It reports whether every destination answered without an
// error.
func (c *caller) once(ctx context.Context, seq int) bool {
	e := c.e
	stop := spin(e.stderr, fmt.Sprintf("waiting for %s from %s", c.cmd, twinList(c.twins)))
	start := time.Now()
	stopHints := c.hints.watch(ctx)
	out, err := c.client.Call(ctx, c.twins, c.cmd, c.data, c.opts)
	rtt := time.Since(start)
	stopHints()
	stop()
	prefix, suffix := "", ""
	if seq > 0 {
		prefix, suffix = fmt.Sprintf("%d: ", seq), fmt.Sprintf("  (%s)", roundDur(rtt))
	}
	failed := err != nil
	if c.asJSON && seq > 0 {
		line := callJSON{Seq: seq, RTTMicros: rtt.Microseconds(), Responses: withText(out)}
		if err != nil {
			line.Error = fmt.Sprintf("%v (%d of %d answered)", err, len(out), len(c.twins))
		}
		b, _ := json.Marshal(line)
		fmt.Fprintf(e.stdout, "%s\n", b)
	} else if c.asJSON {
		printJSON(e, withText(out))
	}
	for _, r := range out {
		if r.Error != nil {
			failed = true
		}
		if c.asJSON {
			continue
		}
		if r.Error != nil {
			fmt.Fprintf(e.stdout, "%s%s: error %d: %s%s\n", prefix, r.Source, r.Error.Code, r.Error.Message, suffix)
			continue
		}
		p, perr := r.Payload()
		if perr != nil {
			failed = true
			fmt.Fprintf(e.stdout, "%s%s: %v%s\n", prefix, r.Source, perr, suffix)
			continue
		}
		if len(c.twins) == 1 {
			fmt.Fprintf(e.stdout, "%s%s%s\n", prefix, p, suffix)
		} else {
			fmt.Fprintf(e.stdout, "%s%s: %s%s\n", prefix, r.Source, p, suffix)
		}
	}
	if err != nil {
		e.errorf("%s%v (%d of %d answered)%s", prefix, err, len(out), len(c.twins), suffix)
	}
	return !failed
}

// callJSON is one call of rmb call --count N --json, a line each.
type callJSON struct {
	Seq       int            `json:"seq"`
	RTTMicros int64          `json:"rtt_us"`
	Responses []responseJSON `json:"responses"`
	Error     string         `json:"error,omitempty"`
}

// callSummary ends rmb call --count N --json.
type callSummary struct {
	Calls    int   `json:"calls"`
	Answered int   `json:"answered"`
	Errors   int   `json:"errors"`
	P50      int64 `json:"p50_us"`
	P99      int64 `json:"p99_us"`
	Max      int64 `json:"max_us"`
}

// repeat makes count calls, one every interval (the next starts at once
// when a call took longer), and prints a summary: calls answered in full,
// calls with an error or a missing answer, and the round-trip times of
// the answered ones. Ctrl-C stops early, with the summary.
func (c *caller) repeat(ctx context.Context, count int, interval time.Duration) int {
	var rtts []time.Duration
	sum := callSummary{}
	start := time.Now()
	for i := 1; i <= count && ctx.Err() == nil; i++ {
		if i > 1 {
			t := time.NewTimer(time.Until(start.Add(time.Duration(i-1) * interval)))
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			if ctx.Err() != nil {
				break
			}
		}
		began := time.Now()
		ok := c.once(ctx, i)
		if ctx.Err() != nil {
			break // interrupted: this call does not count
		}
		sum.Calls++
		if ok {
			sum.Answered++
			rtts = append(rtts, time.Since(began))
		} else {
			sum.Errors++
		}
	}
	l := bench.Summarize(rtts)
	sum.P50, sum.P99, sum.Max = l.P50.Microseconds(), l.P99.Microseconds(), l.Max.Microseconds()
	if c.asJSON {
		b, _ := json.Marshal(sum)
		fmt.Fprintf(c.e.stdout, "%s\n", b)
	} else {
		fmt.Fprintf(c.e.stdout, "--- %s to %s: %d calls, %d answered, %d errors", c.cmd, twinList(c.twins), sum.Calls, sum.Answered, sum.Errors)
		if len(rtts) > 0 {
			fmt.Fprintf(c.e.stdout, "; round trip p50 %s p99 %s max %s", roundDur(l.P50), roundDur(l.P99), roundDur(l.Max))
		}
		fmt.Fprintln(c.e.stdout)
	}
	switch {
	case ctx.Err() != nil:
		return 130
	case sum.Errors > 0:
		return 1
	}
	return 0
}

func twinList(twins []uint32) string {
	s := make([]string, len(twins))
	for i, t := range twins {
		s[i] = strconv.FormatUint(uint64(t), 10)
	}
	return strings.Join(s, ",")
}

func serve(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "serve", "[--cmd echo] [--exec 'SHELL COMMAND' [--exec-timeout 30s] [--exec-max-output 1048576]] [--redis URL]")
	cmd := fs.String("cmd", "echo", "command to serve; requests are answered with their own payload, or by --exec")
	redisURL := fs.String("redis", defaultRedis, "Redis of the local rmb-peer")
	execCmd := fs.String("exec", "", "answer each request with this shell command's stdout, its payload on stdin; a non-zero exit is an error answer with stderr's first line (like nats reply --command)")
	execTimeout := fs.Duration("exec-timeout", 30*time.Second, "with --exec: kill the command after this long (or at the request's deadline, if sooner)")
	execMax := fs.Int("exec-max-output", 1<<20, "with --exec: largest answer, bytes; more is an error answer")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *execTimeout <= 0 || *execMax <= 0 {
		fmt.Fprintln(e.stderr, "rmb serve: --exec-timeout and --exec-max-output must be positive")
		return 2
	}
	rdb, err := redisClient(*redisURL)
	if err != nil {
		return e.errorf("%v", err)
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return e.errorf("cannot reach the peer's Redis at %s: %v", redisapi.RedactURL(*redisURL), err)
	}
	where := redisapi.RedactURL(*redisURL)
	if *execCmd != "" {
		fmt.Fprintf(e.stderr, "serving %s on %s with %q (Ctrl-C to stop)\n", *cmd, where, *execCmd)
	} else {
		fmt.Fprintf(e.stderr, "serving %s on %s (Ctrl-C to stop)\n", *cmd, where)
	}
	client := redisapi.NewClient(rdb)
	handler := func(ctx context.Context, req *redisapi.IncomingRequest, p []byte) ([]byte, error) {
		fmt.Fprintf(e.stdout, "%s from %s: %s\n", req.Command, req.Source, p)
		return p, nil
	}
	if *execCmd != "" {
		run := execHandler(*execCmd, *execTimeout, *execMax)
		handler = func(ctx context.Context, req *redisapi.IncomingRequest, p []byte) ([]byte, error) {
			start := time.Now()
			out, err := run(ctx, req, p)
			took := roundDur(time.Since(start))
			if err != nil {
				fmt.Fprintf(e.stdout, "%s from %s: %d bytes in, %v (%s)\n", req.Command, req.Source, len(p), err, took)
			} else {
				fmt.Fprintf(e.stdout, "%s from %s: %d bytes in, %d out (%s)\n", req.Command, req.Source, len(p), len(out), took)
			}
			return out, err
		}
	}
	// Serve returns when Redis fails (a restart, a dropped connection):
	// say so once, wait until Redis answers again and serve on.
	for {
		err := client.Serve(ctx, *cmd, handler, nil)
		if ctx.Err() != nil {
			return 0
		}
		if err == nil {
			return 0
		}
		fmt.Fprintf(e.stderr, "rmb serve: lost Redis at %s (%v); reconnecting\n", where, err)
		lost := time.Now()
		if !waitForRedis(ctx, rdb) {
			return 0
		}
		fmt.Fprintf(e.stderr, "rmb serve: Redis at %s is back after %s; serving %s again\n", where, time.Since(lost).Round(time.Millisecond), *cmd)
	}
}

// waitForRedis pings rdb, backing off from 100ms to 2s between tries,
// until it answers (true) or ctx ends (false).
func waitForRedis(ctx context.Context, rdb *redis.Client) bool {
	backoff := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err == nil {
			return true
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
