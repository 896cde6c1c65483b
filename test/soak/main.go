// Command soak runs a registrar, a relay, two peers and Redis (the real
// binaries, built from cmd/ into a temporary directory) under a mixed
// load for SOAK_DURATION (default 5m): calls, multi-destination calls,
// error answers, unknown destinations, oversized requests and garbage
// JSON. Every SOAK_SAMPLE (default 5s) it samples the RSS of each process
// (VmRSS) and the goroutines of the relay and the peers (go_goroutines on
// their metrics endpoints). It fails when any destination of a request
// got no response, or two, or an answer from another twin or with another
// request's payload (harness.Count), when RSS
// of the relay or a peer grows over the second half of the run
// (Theil-Sen slope above SOAK_MAX_SLOPE MiB/min, default 2; Redis is
// reported, not judged), or when goroutines do not come back
// near their baseline once the load stops. `make soak` runs it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/test/harness"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("soak: PASS")
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "soak: ignoring %s=%q (want a duration like 2m)\n", name, v)
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v := os.Getenv(name); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return f
		}
	}
	return def
}

// watched is a process whose RSS (and goroutines, when metrics is set)
// are sampled.
type watched struct {
	name    string
	pid     func() int
	metrics string // URL of a Prometheus page with go_goroutines, or ""
	rss     []point
	gor     []point
}

type point struct {
	t time.Duration // since the start of the load
	v float64
}

func run(ctx context.Context) error {
	duration := envDuration("SOAK_DURATION", 5*time.Minute)
	every := envDuration("SOAK_SAMPLE", 5*time.Second)
	maxSlope := envFloat("SOAK_MAX_SLOPE", 2) // MiB per minute
	rate := envFloat("SOAK_RATE", 200)        // requests per second

	dir, err := os.MkdirTemp("", "rmb-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("soak: building binaries into %s\n", dir)
	bins, err := harness.Build(dir)
	if err != nil {
		return err
	}
	c := harness.NewCluster(dir, bins)
	defer c.Close()
	reg, err := c.StartRegistrar(ctx)
	if err != nil {
		return err
	}
	relay, err := c.StartRelay(ctx, reg, harness.RelayOptions{})
	if err != nil {
		return err
	}
	rs, err := c.Redis(false)
	if err != nil {
		return err
	}
	a, err := c.StartPeer(ctx, "peerA", reg, rs.URL()+"/1", relay)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.Logs(20))
	}
	b, err := c.StartPeer(ctx, "peerB", reg, rs.URL()+"/2", relay)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, c.Logs(20))
	}
	rdbA := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 1})
	rdbB := redis.NewClient(&redis.Options{Addr: rs.Addr, DB: 2})
	defer rdbA.Close()
	defer rdbB.Close()
	redisPID := func() int {
		info, err := rdbA.Info(context.Background(), "server").Result()
		if err != nil {
			return 0
		}
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		return 0
	}
	procs := []*watched{
		{name: "relay", pid: relay.PID, metrics: relay.HTTP() + "/metrics"},
		{name: "peerA", pid: a.PID, metrics: "http://" + a.MetricsAddr + "/metrics"},
		{name: "peerB", pid: b.PID, metrics: "http://" + b.MetricsAddr + "/metrics"},
		{name: "redis", pid: redisPID},
	}

	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	// Services on both peers, so multi-destination calls [A, B] have an
	// answer from each.
	echoB := harness.NewEcho(rdbB, "echo")
	echoA := harness.NewEcho(rdbA, "echo")
	echoB.Workers, echoA.Workers = 8, 4
	go echoB.Run(lctx)
	go echoA.Run(lctx)
	bot := harness.NewBot(rdbA, "soak", "echo", 30)
	go bot.Collect(lctx)
	if err := bot.Push(ctx, "warmup", []uint32{b.Twin}); err != nil {
		return err
	}
	if err := bot.WaitDone(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("warm-up: %w\n%s", err, c.Logs(20))
	}

	fmt.Printf("soak: %v of mixed load at %.0f requests/s, sampling every %v\n", duration, rate, every)
	start := time.Now()
	sample := func() {
		at := time.Since(start)
		for _, p := range procs {
			if pid := p.pid(); pid != 0 {
				if r, err := harness.RSS(pid); err == nil {
					p.rss = append(p.rss, point{at, float64(r)})
				}
			}
			if p.metrics != "" {
				if m, err := harness.Scrape(ctx, p.metrics); err == nil {
					p.gor = append(p.gor, point{at, m.Sum("go_goroutines", nil)})
				}
			}
		}
	}
	// The dead-letter list is drained as an operator would (`rmb
	// deadletter`), so Redis does not grow with it; entries are kept here
	// without their message for the final count.
	var dead []redisapi.DeadLetter
	drainDead := func() error {
		for {
			raw, err := rdbA.LPopCount(ctx, redisapi.QueueDeadLetter, 1000).Result()
			if errors.Is(err, redis.Nil) || (err == nil && len(raw) == 0) {
				return nil
			}
			if err != nil {
				return err
			}
			for _, r := range raw {
				var d redisapi.DeadLetter
				if err := json.Unmarshal([]byte(r), &d); err != nil {
					return fmt.Errorf("dead letter is not JSON: %w", err)
				}
				d.Message = ""
				dead = append(dead, d)
			}
		}
	}
	sample()
	loadDone := make(chan mix)
	go func() { loadDone <- drive(lctx, bot, rdbA, a.Twin, b.Twin, rate, duration) }()
	t := time.NewTicker(every)
	var counts mix
sampling:
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case counts = <-loadDone:
			break sampling
		case <-t.C:
			if err := drainDead(); err != nil {
				return err
			}
			sample()
			fmt.Printf("  %5s  pending=%d served=%d", time.Since(start).Round(time.Second), bot.Pending(), echoA.Served()+echoB.Served())
			for _, p := range procs {
				if len(p.rss) > 0 {
					fmt.Printf("  %s=%.1fMiB", p.name, p.rss[len(p.rss)-1].v/(1<<20))
				}
			}
			fmt.Println()
		}
	}
	t.Stop()
	loadEnd := time.Since(start)
	// Drain: every request answered (or errored at its deadline).
	drainErr := bot.WaitDone(ctx, 60*time.Second)
	// Let the goroutines of finished work end, then sample the end state.
	time.Sleep(2 * every)
	sample()

	if err := drainDead(); err != nil {
		return err
	}
	tally := harness.Count(bot, nil, dead)
	var problems []error
	if drainErr != nil {
		problems = append(problems, fmt.Errorf("drain: %w", drainErr))
	}
	if tally.Lost > 0 {
		q, _ := rdbA.LLen(ctx, redisapi.QueueLocal).Result()
		pr, _ := rdbA.LLen(ctx, "msgbus.system.local.processing").Result()
		pe, _ := rdbA.HLen(ctx, "msgbus.system.pending").Result()
		sq, _ := rdbB.LLen(ctx, "msgbus.echo").Result()
		fmt.Printf("at the end: %s=%d, its processing list=%d, pending hash=%d, peer B's msgbus.echo=%d\n", redisapi.QueueLocal, q, pr, pe, sq)
		if raw, _ := rdbA.LRange(ctx, "msgbus.system.local.processing", 0, 2).Result(); len(raw) > 0 {
			for _, r := range raw {
				fmt.Printf("  stuck: %.200s\n", r)
			}
		}
	}
	for _, id := range tally.LostIDs[:min(3, len(tally.LostIDs))] {
		fmt.Printf("lost %s: want %d responses, got %+v\n", id, bot.Want(id), bot.Responses(id))
	}
	if bad := tally.Clean(); bad != "" {
		problems = append(problems, fmt.Errorf("messages lost or answered wrong: %s", bad))
	}
	if tally.DupResponses > 0 || tally.Strays > 0 {
		problems = append(problems, fmt.Errorf("%d duplicate responses, %d responses to requests never pushed, with every process up", tally.DupResponses, tally.Strays))
	}
	if tally.Timeouts > 0 {
		problems = append(problems, fmt.Errorf("%d requests timed out (408) with every process up", tally.Timeouts))
	}
	garbageDead := 0
	for _, d := range dead {
		if d.Ret == "" {
			garbageDead++
		}
	}
	if garbageDead != counts.garbage {
		problems = append(problems, fmt.Errorf("%d garbage messages pushed, %d dead-lettered", counts.garbage, garbageDead))
	}

	fmt.Printf("\nsoak: load %v, drained in %v\n", loadEnd.Round(time.Second), (time.Since(start) - loadEnd - 2*every).Round(time.Second))
	fmt.Printf("requests: %d calls, %d multi-destination, %d asked to fail, %d to an unknown twin, %d oversized; %d garbage JSON\n",
		counts.calls, counts.multi, counts.fail, counts.unknown, counts.oversize, counts.garbage)
	fmt.Printf("outcome:  %s; %d dead letters (%d garbage)\n\n", tally, len(dead), garbageDead)

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "process\tRSS start MiB\tRSS max MiB\tRSS end MiB\tslope 2nd half MiB/min\tgoroutines start\tmax\tend\t")
	for _, p := range procs {
		if len(p.rss) < 2 {
			problems = append(problems, fmt.Errorf("%s: too few RSS samples", p.name))
			continue
		}
		// The second half of the load phase (the end sample is after the drain).
		var half []point
		for _, pt := range p.rss {
			if pt.t >= loadEnd/2 && pt.t <= loadEnd {
				half = append(half, pt)
			}
		}
		slope := slopePerMinute(half) / (1 << 20)
		// Redis is not ours, and its RSS follows the 2 MiB requests in
		// transit: reported, not judged.
		if slope > maxSlope && p.name != "redis" {
			problems = append(problems, fmt.Errorf("%s: RSS grows %.2f MiB/min over the second half (limit %.2f)", p.name, slope, maxSlope))
		}
		g0, gmax, gend := "-", "-", "-"
		if len(p.gor) >= 2 {
			// Baseline: the first sample under load.
			base := p.gor[min(1, len(p.gor)-1)].v
			end := p.gor[len(p.gor)-1].v
			peak := 0.0
			for _, pt := range p.gor {
				peak = max(peak, pt.v)
			}
			g0, gmax, gend = fmt.Sprint(p.gor[0].v), fmt.Sprint(peak), fmt.Sprint(end)
			if end > base+20 && end > 1.2*base {
				problems = append(problems, fmt.Errorf("%s: %v goroutines after the load, %v under load at the start", p.name, end, base))
			}
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%+.2f\t%s\t%s\t%s\t\n", p.name,
			p.rss[0].v/(1<<20), maxOf(p.rss)/(1<<20), p.rss[len(p.rss)-1].v/(1<<20), slope, g0, gmax, gend)
	}
	tw.Flush()
	fmt.Println()
	return errors.Join(problems...)
}

// mix counts what drive pushed, by kind.
type mix struct{ calls, multi, fail, unknown, oversize, garbage int }

// drive pushes the mixed load at rate per second until duration passes.
func drive(ctx context.Context, bot *harness.Bot, rdb *redis.Client, a, b uint32, rate float64, duration time.Duration) mix {
	var m mix
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	end := time.Now().Add(duration)
	big := make([]byte, 2<<20)
	for i := 0; time.Now().Before(end); i++ {
		select {
		case <-ctx.Done():
			return m
		case <-t.C:
		}
		id := fmt.Sprintf("soak-%d", i)
		switch r := rand.IntN(1000); {
		case r < 880:
			bot.Push(ctx, id, []uint32{b})
			m.calls++
		case r < 940:
			bot.Push(ctx, id, []uint32{a, b})
			m.multi++
		case r < 970:
			bot.Push(ctx, "fail-"+id, []uint32{b})
			m.fail++
		case r < 985:
			bot.Push(ctx, id, []uint32{b, 3_999_999_999})
			m.unknown++
		case r < 990:
			bot.PushRaw(ctx, id, 1, bot.Request(id, []uint32{b}, big))
			m.oversize++
		default:
			g := garbage[rand.IntN(len(garbage))]
			if rdb.LPush(ctx, redisapi.QueueLocal, g).Err() == nil {
				m.garbage++
			}
		}
	}
	return m
}

var garbage = []string{
	"not json", "\xff\xfe", `{"cmd":"echo"}`, `[1,2,3]`, strings.Repeat("[", 20000),
	`{"ver":1,"cmd":"echo","dst":"x","ret":""}`,
}

func maxOf(ps []point) float64 {
	m := 0.0
	for _, p := range ps {
		m = max(m, p.v)
	}
	return m
}

// slopePerMinute is the Theil-Sen slope of v over t, per minute: the
// median of the slopes between every pair of samples. Unlike least
// squares it is not pulled by the RSS spikes of a few large messages in
// transit, while a steady leak moves every pair.
func slopePerMinute(ps []point) float64 {
	var slopes []float64
	for i := range ps {
		for j := i + 1; j < len(ps); j++ {
			if dt := (ps[j].t - ps[i].t).Minutes(); dt > 0 {
				slopes = append(slopes, (ps[j].v-ps[i].v)/dt)
			}
		}
	}
	if len(slopes) == 0 {
		return 0
	}
	sort.Float64s(slopes)
	return slopes[len(slopes)/2]
}
