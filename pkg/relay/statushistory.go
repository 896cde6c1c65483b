package relay

import (
	"context"
	"math"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// The status page's history and health: every statusSampleEvery the relay
// records one sample (throughput, routing latency, sessions, memory) in a
// ring of statusHistoryLen, so a page opened now draws the last hour at
// once, and checks the health of its registrar and Redis store.

const (
	// statusSampleEvery is the period of the samples and health checks.
	statusSampleEvery = 5 * time.Second
	// statusHistoryLen bounds the ring: one hour of samples.
	statusHistoryLen = 720
	// healthTimeout bounds one health check.
	healthTimeout = 2 * time.Second
)

// statusSample is one point of the history.
type statusSample struct {
	Time time.Time `json:"t"`
	// In and Out are envelopes per second over the interval before Time:
	// received (sessions and federation) and sent (sessions and
	// federation).
	In  float64 `json:"in"`
	Out float64 `json:"out"`
	// P50 and P99 are quantiles of the routing time (rmb_relay_routing_seconds)
	// of the envelopes routed in the interval, in seconds; null when none
	// was.
	P50        *float64 `json:"p50_seconds"`
	P99        *float64 `json:"p99_seconds"`
	Sessions   int      `json:"sessions"`
	Memory     uint64   `json:"memory_bytes"`
	Goroutines int      `json:"goroutines"`
}

// latencyStatus is the routing latency over the latest sample interval.
type latencyStatus struct {
	P50    *float64 `json:"p50_seconds"`
	P99    *float64 `json:"p99_seconds"`
	Count  uint64   `json:"count"`          // envelopes routed in the window
	Window float64  `json:"window_seconds"` // length of the window
}

// processStatus is the relay process's memory and goroutines.
type processStatus struct {
	// MemoryBytes is the memory the Go runtime holds from the operating
	// system (mapped and not released): close to the resident size.
	MemoryBytes uint64 `json:"memory_bytes"`
	// HeapBytes is the heap in objects, live or not yet swept.
	HeapBytes  uint64 `json:"heap_bytes"`
	Goroutines int    `json:"goroutines"`
}

// healthStatus is the latest check of one backend.
type healthStatus struct {
	Name string `json:"name"` // "registrar" or "redis"
	OK   bool   `json:"ok"`
	// CheckedAt is the latest check (null before the first); Since is
	// when the current state (ok or not) began.
	CheckedAt *time.Time `json:"checked_at"`
	Since     *time.Time `json:"since,omitempty"`
	// Error is the latest check's error, in the admin view only (it may
	// name addresses).
	Error string `json:"error,omitempty"`
}

// pinger is a Directory or Store that can check its backend:
// *registrar.Client and *RedisStore are.
type pinger interface {
	Ping(ctx context.Context) error
}

// Ping checks that Redis answers.
func (s *RedisStore) Ping(ctx context.Context) error { return s.client.Ping(ctx).Err() }

type healthCheck struct {
	name string
	ping func(context.Context) error
}

// statusHistory is the ring of samples and the health of the backends.
type statusHistory struct {
	r      *Relay
	checks []healthCheck // read-only

	mu     sync.Mutex // guards the following
	ring   [statusHistoryLen]statusSample
	n      int // samples in ring
	next   int // where the next sample goes
	health []healthStatus

	// The previous sample's totals, for the rates and latency deltas.
	prevT       time.Time
	prevIn      uint64
	prevOut     uint64
	prevCount   uint64
	prevBuckets []uint64
	latency     latencyStatus
}

func newStatusHistory(r *Relay) *statusHistory {
	h := &statusHistory{r: r}
	if p, ok := r.opts.Directory.(pinger); ok {
		h.checks = append(h.checks, healthCheck{"registrar", p.Ping})
	}
	if p, ok := r.store.(pinger); ok {
		h.checks = append(h.checks, healthCheck{"redis", p.Ping})
	}
	for _, c := range h.checks {
		h.health = append(h.health, healthStatus{Name: c.name})
	}
	return h
}

// run samples and checks every statusSampleEvery until the relay shuts
// down. The first sample is taken at once, so the history is never empty.
func (h *statusHistory) run(ctx context.Context) {
	h.sample()
	h.check(ctx)
	t := time.NewTicker(statusSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.sample()
			h.check(ctx)
		}
	}
}

// readProcess reads the runtime's figures; it does not stop the world.
func readProcess() processStatus {
	s := []rtmetrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	rtmetrics.Read(s)
	u := func(i int) uint64 {
		if s[i].Value.Kind() != rtmetrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return processStatus{
		MemoryBytes: u(0) - min(u(0), u(1)),
		HeapBytes:   u(2),
		Goroutines:  int(u(3)),
	}
}

// sample appends one point to the ring.
func (h *statusHistory) sample() {
	r := h.r
	c := &r.counters
	now := time.Now()
	in := c.msgsIn.Load() + c.fedMsgsIn.Load()
	out := c.msgsOut.Load() + c.fedMsgsOut.Load()
	var m dto.Metric
	r.metrics.latency.Write(&m)
	hist := m.GetHistogram()
	count := hist.GetSampleCount()
	bounds := make([]float64, len(hist.GetBucket()))
	cum := make([]uint64, len(bounds))
	for i, b := range hist.GetBucket() {
		bounds[i], cum[i] = b.GetUpperBound(), b.GetCumulativeCount()
	}
	proc := readProcess()
	sessions := r.sessionCount()

	h.mu.Lock()
	defer h.mu.Unlock()
	s := statusSample{Time: r.opts.Now().UTC(), Sessions: sessions, Memory: proc.MemoryBytes, Goroutines: proc.Goroutines}
	if !h.prevT.IsZero() {
		dt := now.Sub(h.prevT).Seconds()
		if dt > 0 {
			s.In = float64(in-min(in, h.prevIn)) / dt
			s.Out = float64(out-min(out, h.prevOut)) / dt
		}
		delta := make([]uint64, len(cum))
		for i := range cum {
			delta[i] = cum[i] - min(cum[i], h.prevBuckets[i])
		}
		n := count - min(count, h.prevCount)
		s.P50, s.P99 = bucketQuantile(0.5, bounds, delta, n), bucketQuantile(0.99, bounds, delta, n)
		h.latency = latencyStatus{P50: s.P50, P99: s.P99, Count: n, Window: dt}
	}
	h.prevT, h.prevIn, h.prevOut, h.prevCount, h.prevBuckets = now, in, out, count, cum
	h.ring[h.next] = s
	h.next = (h.next + 1) % statusHistoryLen
	h.n = min(h.n+1, statusHistoryLen)
}

// bucketQuantile estimates quantile q of n observations from cumulative
// bucket counts cum with upper bounds, interpolating linearly within a
// bucket as Prometheus's histogram_quantile does. Observations above the
// last bound count as the last bound. nil when n is 0.
func bucketQuantile(q float64, bounds []float64, cum []uint64, n uint64) *float64 {
	if n == 0 || len(bounds) == 0 {
		return nil
	}
	rank := q * float64(n)
	lower, below := 0.0, uint64(0)
	for i, upper := range bounds {
		if float64(cum[i]) >= rank && cum[i] > below {
			v := lower + (upper-lower)*(rank-float64(below))/float64(cum[i]-below)
			v = math.Max(lower, math.Min(v, upper))
			return &v
		}
		lower, below = upper, cum[i]
	}
	v := bounds[len(bounds)-1]
	return &v
}

// history returns the samples, oldest first.
func (h *statusHistory) history() []statusSample {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]statusSample, 0, h.n)
	start := (h.next - h.n + statusHistoryLen) % statusHistoryLen
	for i := range h.n {
		out = append(out, h.ring[(start+i)%statusHistoryLen])
	}
	return out
}

// latest returns the latest sample (nil before the first) and the latency
// over its interval.
func (h *statusHistory) latest() (*statusSample, latencyStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return nil, h.latency
	}
	s := h.ring[(h.next-1+statusHistoryLen)%statusHistoryLen]
	return &s, h.latency
}

// check runs every health check, one after the other, each bounded by
// healthTimeout.
func (h *statusHistory) check(ctx context.Context) {
	for i, c := range h.checks {
		cctx, cancel := context.WithTimeout(ctx, healthTimeout)
		err := c.ping(cctx)
		cancel()
		if ctx.Err() != nil {
			return // shutting down: not the backend's fault
		}
		now := h.r.opts.Now().UTC()
		h.mu.Lock()
		st := &h.health[i]
		ok := err == nil
		if st.CheckedAt == nil || st.OK != ok {
			st.Since = &now
		}
		st.OK, st.CheckedAt, st.Error = ok, &now, ""
		if err != nil {
			st.Error = err.Error()
			if len(st.Error) > 300 {
				st.Error = st.Error[:300] + "..."
			}
		}
		h.mu.Unlock()
	}
}

// healthView returns the backends' health; errors only for the admin.
func (h *statusHistory) healthView(admin bool) []healthStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]healthStatus, len(h.health))
	copy(out, h.health)
	if !admin {
		for i := range out {
			out[i].Error = ""
		}
	}
	return out
}
