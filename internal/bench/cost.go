package bench

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/procs"
)

// Cost is what a phase cost per round trip: CPU of this process (the
// load, and whatever runs in-process with it), CPU of redis-server, and
// the Redis commands it ran.
type Cost struct {
	// MachineCPU is all the CPU the machine was busy for, per round trip
	// (/proc/stat: user, system, interrupts, including the kernel's
	// network work that no process is charged for); zero where
	// /proc/stat is missing. On an otherwise idle machine it is the
	// whole cost, and cores / MachineCPU the best throughput to expect.
	MachineCPU    time.Duration
	ProcessCPU    time.Duration      // per round trip
	RedisCPU      time.Duration      // per round trip
	RedisCommands float64            // per round trip, all commands
	ByCommand     map[string]float64 // per round trip, by command name
	// CommandTime is the time Redis spent executing each command, per
	// round trip (commandstats usec: without I/O, and a script's
	// commands count in the script's time too).
	CommandTime map[string]time.Duration
}

// costMeter samples the counters a Cost is computed from.
type costMeter struct {
	rdb   *redis.Client
	busy  time.Duration
	cpu   time.Duration
	rcpu  time.Duration
	calls map[string]int64
	usec  map[string]int64
}

func startCost(ctx context.Context, rdb *redis.Client) *costMeter {
	m := &costMeter{rdb: rdb, cpu: procs.CPUTime(), busy: machineBusy()}
	m.rcpu, m.calls, m.usec = redisCounters(ctx, rdb)
	return m
}

// stop returns the cost per round trip since startCost; n is the number of
// round trips. Redis figures are zero when INFO failed.
func (m *costMeter) stop(ctx context.Context, n int64) Cost {
	if n <= 0 {
		return Cost{}
	}
	cpu := procs.CPUTime() - m.cpu
	busy := machineBusy() - m.busy
	rcpu, calls, usec := redisCounters(ctx, m.rdb)
	c := Cost{MachineCPU: busy / time.Duration(n), ProcessCPU: cpu / time.Duration(n), ByCommand: map[string]float64{}, CommandTime: map[string]time.Duration{}}
	if m.calls == nil || calls == nil {
		return c
	}
	c.RedisCPU = (rcpu - m.rcpu) / time.Duration(n)
	for name, v := range calls {
		d := v - m.calls[name]
		// INFO itself, once per sample.
		if name == "info" {
			d -= 1
		}
		if d > 0 {
			per := float64(d) / float64(n)
			c.ByCommand[name] = per
			c.RedisCommands += per
			c.CommandTime[name] = time.Duration(usec[name]-m.usec[name]) * time.Microsecond / time.Duration(n)
		}
	}
	return c
}

// redisCounters reads redis-server's CPU time, and the calls and
// microseconds of each command.
func redisCounters(ctx context.Context, rdb *redis.Client) (cpu time.Duration, calls, usec map[string]int64) {
	s, err := rdb.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return 0, nil, nil
	}
	calls, usec = map[string]int64{}, map[string]int64{}
	for line := range strings.SplitSeq(s, "\n") {
		line = strings.TrimSpace(line)
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case k == "used_cpu_sys" || k == "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			cpu += time.Duration(f * float64(time.Second))
		case strings.HasPrefix(k, "cmdstat_"):
			// calls=N,usec=N,usec_per_call=...
			name := strings.TrimPrefix(k, "cmdstat_")
			for f := range strings.SplitSeq(v, ",") {
				key, val, _ := strings.Cut(f, "=")
				n, _ := strconv.ParseInt(val, 10, 64)
				switch key {
				case "calls":
					calls[name] = n
				case "usec":
					usec[name] = n
				}
			}
		}
	}
	return cpu, calls, usec
}

// machineBusy is the CPU time all cores spent not idle since boot, from
// the first line of /proc/stat (in USER_HZ ticks, 100 per second on
// Linux); zero where it cannot be read.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already counted in user.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100)
}
