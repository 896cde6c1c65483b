package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/bench"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// responseJSON is a response as rmb call --json prints it: the peer's
// JSON, plus the payload as text when it is text.
type responseJSON struct {
	redisapi.IncomingResponse
	// Text is dat decoded, when it is valid UTF-8 without control
	// characters other than tab, CR and LF; dat stays as it was.
	Text *string `json:"text,omitempty"`
}

func withText(in []redisapi.IncomingResponse) []responseJSON {
	out := make([]responseJSON, len(in))
	for i, r := range in {
		out[i].IncomingResponse = r
		if r.Error != nil {
			continue
		}
		if p, err := r.Payload(); err == nil && isText(p) {
			s := string(p)
			out[i].Text = &s
		}
	}
	return out
}

// isText reports whether p is UTF-8 text: no invalid sequences, no
// control characters but tab, CR and LF.
func isText(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		if (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f {
			return false
		}
	}
	return true
}

// hintAfter is how long a call waits before it looks for why nothing
// answers.
const hintAfter = 3 * time.Second

// hints says, once each, why a call may get no answer: its request still
// sits in msgbus.system.local (no rmb-peer on this Redis), or requests
// for the command sit in msgbus.<cmd> on this Redis (the call goes to
// this peer's own twin and nothing serves the command).
type hints struct {
	mu         sync.Mutex
	noPeer     bool
	noService  bool
	rdb        *redis.Client
	where, cmd string
	printf     func(format string, args ...any)
	after      time.Duration
}

// watch looks after hintAfter, while a call waits; stop ends the watch.
func (h *hints) watch(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(h.after)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.check(ctx)
	}()
	return func() { cancel(); <-done }
}

func (h *hints) check(ctx context.Context) {
	local, _ := h.rdb.LLen(ctx, redisapi.QueueLocal).Result()
	queued, _ := h.rdb.LLen(ctx, redisapi.CommandQueue(h.cmd)).Result()
	if ctx.Err() != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if local > 0 && !h.noPeer {
		h.noPeer = true
		h.printf("hint: nothing has taken the request from %s for %s: is an rmb-peer running on this Redis (%s)?",
			redisapi.QueueLocal, h.after, h.where)
	}
	if queued > 0 && !h.noService {
		h.noService = true
		h.printf("hint: %d request(s) wait in %s on this Redis: nothing serves %s here (rmb serve --cmd %s would)",
			queued, redisapi.CommandQueue(h.cmd), h.cmd, h.cmd)
	}
}

// latencySummary ends rmb call --latency --json.
type latencySummary struct {
	Samples int   `json:"samples"`
	Errors  int   `json:"errors"`
	Min     int64 `json:"min_us"`
	Avg     int64 `json:"avg_us"`
	Max     int64 `json:"max_us"`
	P50     int64 `json:"p50_us"`
	P99     int64 `json:"p99_us"`
}

// latency makes calls one after another, --interval apart, count of them
// (0: until Ctrl-C), in the manner of redis-cli --latency: no line per
// call, but min, avg, max, p50 and p99 of the round trips, kept up to
// date on a terminal and printed at the end.
func (c *caller) latency(ctx context.Context, count int, interval time.Duration) int {
	var rtts []time.Duration
	var sum time.Duration
	errs := 0
	tty := isTerminal(c.e.stdout) && !c.asJSON
	line := func() string {
		sorted := append([]time.Duration(nil), rtts...)
		l := bench.Summarize(sorted)
		if len(sorted) == 0 {
			return fmt.Sprintf("no answers (%d errors)", errs)
		}
		return fmt.Sprintf("min %s, avg %s, max %s, p50 %s, p99 %s (%d samples, %d errors)", roundDur(sorted[0]),
			roundDur(sum/time.Duration(len(sorted))), roundDur(l.Max), roundDur(l.P50), roundDur(l.P99), len(sorted), errs)
	}
	for i := 1; count == 0 || i <= count; i++ {
		if i > 1 && interval > 0 {
			t := time.NewTimer(interval)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if ctx.Err() != nil {
			break
		}
		began := time.Now()
		stopHints := c.hints.watch(ctx)
		out, err := c.client.Call(ctx, c.twins, c.cmd, c.data, c.opts)
		rtt := time.Since(began)
		stopHints()
		if ctx.Err() != nil {
			break
		}
		ok := err == nil
		for _, r := range out {
			ok = ok && r.Error == nil
		}
		if ok {
			rtts = append(rtts, rtt)
			sum += rtt
		} else {
			errs++
		}
		if tty {
			fmt.Fprintf(c.e.stdout, "\r\033[K%s", line())
		}
	}
	if c.asJSON {
		sorted := append([]time.Duration(nil), rtts...)
		l := bench.Summarize(sorted)
		s := latencySummary{Samples: len(rtts), Errors: errs, Max: l.Max.Microseconds(), P50: l.P50.Microseconds(), P99: l.P99.Microseconds()}
		if len(sorted) > 0 {
			s.Min, s.Avg = sorted[0].Microseconds(), (sum / time.Duration(len(sorted))).Microseconds()
		}
		b, _ := json.Marshal(s)
		fmt.Fprintf(c.e.stdout, "%s\n", b)
	} else {
		if tty {
			fmt.Fprint(c.e.stdout, "\r\033[K")
		}
		fmt.Fprintf(c.e.stdout, "%s to %s: %s\n", c.cmd, twinList(c.twins), line())
	}
	if errs > 0 && len(rtts) == 0 {
		return 1
	}
	return 0
}
