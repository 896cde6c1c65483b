package bench

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Latency summarizes a set of durations.
type Latency struct {
	P50, P90, P99, Max time.Duration
	N                  int
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Latency{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: d[len(d)-1], N: len(d)}
}

func (l Latency) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", round(l.P50), round(l.P90), round(l.P99), round(l.Max))
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// progress prints a one-line status to w every second until stop closes.
func progress(w io.Writer, stop <-chan struct{}, line func(elapsed time.Duration) string) {
	if w == nil {
		return
	}
	start := time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			fmt.Fprint(w, "\r\033[K")
			return
		case <-t.C:
			fmt.Fprintf(w, "\r\033[K%s", line(time.Since(start).Round(time.Second)))
		}
	}
}

// Summarize returns the percentiles of d, which it sorts; for the CLI's
// repeated calls (rmb call --count).
func Summarize(d []time.Duration) Latency { return summarize(d) }
