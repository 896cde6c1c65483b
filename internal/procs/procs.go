// Package procs tunes the Go runtime for the project's long-running
// processes, which are woken a few times per message:
//
//	procs.QuietSysmon() // first in main
//	...
//	go procs.Adapt(ctx, procs.Options{OnChange: func(n int) { gauge.Set(float64(n)) }})
//
// QuietSysmon keeps the runtime's monitor thread from sleeping deeply
// between messages (sysmon.go says why). Adapt runs a process on one P
// (GOMAXPROCS=1) while one core is enough for it, and gives it all its
// Ps back once it needs more.
//
// Adapt samples the process's CPU time (user + system) every
// Options.Every. At one P, a process using more than Options.High cores
// in two samples in a row gets the GOMAXPROCS it started with; at more
// than one P, a process using less than Options.Low cores for
// Options.Quiet samples in a row goes back to one. Going up hands
// GOMAXPROCS back to the runtime (runtime.SetDefaultGOMAXPROCS), so its
// automatic updates for CPU quota changes apply again. It does nothing
// when the GOMAXPROCS environment variable is set (the operator decided)
// or when GOMAXPROCS is already 1, and hands GOMAXPROCS back to the
// runtime when ctx ends.
//
// Why: a lightly loaded rmb-peer is woken a few times per message, and
// with more than one P the Go scheduler wakes a second thread at every
// hand-off between goroutines (wakep) to look for work, which finds none
// and sleeps again. Where a thread switch is expensive (20-30 µs on the
// project's virtual machine), those switches were most of the peer's CPU
// per message: with one P the ready goroutine runs on the same thread as
// soon as the current one blocks. docs/benchmarks.md has the figures.
package procs

import (
	"context"
	"os"
	"runtime"
	"time"
)

// Options tune Adapt; zero fields take the defaults.
type Options struct {
	// Every is the sampling period (default 100 ms).
	Every time.Duration
	// High: at one P, more CPU than this (in cores) in two samples in a
	// row restores all Ps (default 0.8).
	High float64
	// Low: at more than one P, less CPU than this for Quiet samples in a
	// row goes back to one P (default 0.5).
	Low float64
	// Quiet (default 50: 5 s at the default period).
	Quiet int
	// OnChange, if set, is called with each new GOMAXPROCS, first with
	// the one Adapt starts at.
	OnChange func(int)
}

func (o Options) withDefaults() Options {
	if o.Every <= 0 {
		o.Every = 100 * time.Millisecond
	}
	if o.High <= 0 {
		o.High = 0.8
	}
	if o.Low <= 0 {
		o.Low = 0.5
	}
	if o.Quiet <= 0 {
		o.Quiet = 50
	}
	return o
}

// Adapt runs until ctx ends. It starts at one P.
func Adapt(ctx context.Context, o Options) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	max := runtime.GOMAXPROCS(0)
	if max <= 1 || !cpuTimeKnown {
		return
	}
	o = o.withDefaults()
	c := &controller{max: max, cur: 1, opts: o}
	// Going up is SetDefaultGOMAXPROCS, not GOMAXPROCS(max): it takes
	// what the runtime would choose now (CPU count, affinity, cgroup
	// quota) and turns its automatic updates back on, which a call to
	// GOMAXPROCS turns off.
	set := func(n int) {
		if n == 1 {
			runtime.GOMAXPROCS(1)
		} else {
			runtime.SetDefaultGOMAXPROCS()
			n = runtime.GOMAXPROCS(0)
		}
		if o.OnChange != nil {
			o.OnChange(n)
		}
	}
	set(1)
	defer func() { set(max) }()
	t := time.NewTicker(o.Every)
	defer t.Stop()
	lastCPU, lastAt := CPUTime(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cpu, now := CPUTime(), time.Now()
		use := float64(cpu-lastCPU) / float64(now.Sub(lastAt))
		lastCPU, lastAt = cpu, now
		if n, changed := c.step(use); changed {
			set(n)
		}
		if c.cur > 1 {
			c.max = runtime.GOMAXPROCS(0) // the runtime may have updated it
			c.cur = c.max
		}
	}
}

// controller decides, one CPU sample (in cores) at a time.
type controller struct {
	max, cur int
	opts     Options
	run      int // samples in a row past the threshold of cur
}

func (c *controller) step(use float64) (procs int, changed bool) {
	if c.cur == 1 {
		if use <= c.opts.High {
			c.run = 0
			return c.cur, false
		}
		if c.run++; c.run < 2 {
			return c.cur, false
		}
		c.cur, c.run = c.max, 0
		return c.cur, true
	}
	if use >= c.opts.Low {
		c.run = 0
		return c.cur, false
	}
	if c.run++; c.run < c.opts.Quiet {
		return c.cur, false
	}
	c.cur, c.run = 1, 0
	return c.cur, true
}
