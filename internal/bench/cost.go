package bench

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cost is what a phase cost per round trip: CPU of this process (the
// load, and whatever runs in-process with it), CPU of redis-server, and
// the Redis commands it ran.
type Cost struct {
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
	cpu   time.Duration
	rcpu  time.Duration
	calls map[string]int64
	usec  map[string]int64
}

func startCost(ctx context.Context, rdb *redis.Client) *costMeter {
	m := &costMeter{rdb: rdb, cpu: processCPU()}
	m.rcpu, m.calls, m.usec = redisCounters(ctx, rdb)
	return m
}

// stop returns the cost per round trip since startCost; n is the number of
// round trips. Redis figures are zero when INFO failed.
func (m *costMeter) stop(ctx context.Context, n int64) Cost {
	if n <= 0 {
		return Cost{}
	}
	cpu := processCPU() - m.cpu
	rcpu, calls, usec := redisCounters(ctx, m.rdb)
	c := Cost{ProcessCPU: cpu / time.Duration(n), ByCommand: map[string]float64{}, CommandTime: map[string]time.Duration{}}
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
