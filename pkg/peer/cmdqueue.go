package peer

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Command queues: requests nobody serves.
//
// Every verified request for a command without an in-process handler is
// pushed on msgbus.<cmd> for a service to pop. When no service pops, the
// entries would stay there for ever, and since the command name comes
// from the sender, so would the lists. The peer bounds them:
//
//   - Options.Serve, when set, lists (as globs) the commands served
//     through Redis; a request for any other is answered at once with
//     404 and never touches Redis.
//   - At most Options.MaxCommandQueues distinct command lists are in use
//     at a time; a request for a new command beyond that is refused with
//     429 (reason command_queues). A list leaves the count once a sweep
//     found it empty and nothing was pushed on it for a while.
//   - Each list holds at most Options.QueueLimit entries (count) and
//     about Options.MaxQueueBytes bytes; all lists together about
//     Options.MaxCommandBytes. A request over a bound is refused with 429.
//   - Every CommandSweepInterval, the lists that may hold an entry past
//     its deadline (or that near their byte bound) are swept by a script
//     that removes the expired entries and measures what is left. Each
//     removed request is answered with 408 to its sender and
//     dead-lettered (its payload left out when large).
//
// The byte counts are estimates between measurements: a push adds its
// size, a sweep replaces the sum with what it measured. Pops by services
// are seen at the next measurement, so the estimate errs on the side of
// refusing; a request the estimate refuses is admitted after all when
// the list, measured again then (MEMORY USAGE; requests that find a
// measurement running wait for it), has room.
//
// Lists that were already in Redis when the peer started are not known
// until the peer pushes on them again.

// cmdQueues tracks the command lists the peer pushed on.
type cmdQueues struct {
	mu    sync.Mutex
	q     map[string]*cmdQueue // by list name
	total int64                // estimated bytes of all lists
}

type cmdQueue struct {
	bytes    int64     // estimated bytes in the list
	due      int64     // unix seconds of the earliest deadline that may be in the list; 0 none
	admitted int64     // bytes admitted in all, for the sweep's bookkeeping
	inflight int64     // bytes admitted whose push has not landed (or failed) yet
	last     time.Time // of the last admission
	// measuring is closed when the measurement remeasure runs ends; nil
	// when none runs.
	measuring chan struct{}
}

// Reasons a request for a command queue is refused (rmb_peer_dropped_total).
const (
	dropBadCommand     = "bad_command"
	dropReserved       = "reserved_command"
	dropNotServed      = "not_served"
	dropCommandQueues  = "command_queues"
	dropQueueBytes     = "queue_bytes"
	dropCommandBytes   = "command_bytes"
	dropQueueFull      = "queue_full"
	dropUnserved       = "unserved_expired"
	dropAnswerCache    = "answer_cache_full"
	deadLetterDatLimit = 4096
)

// registerBoundGauges adds the gauges of what the bounds hold:
// rmb_peer_command_queues, rmb_peer_command_queue_bytes (estimated) and
// rmb_peer_answer_cache_bytes, and the e2e key cache's size and evictions.
func (p *Peer) registerBoundGauges() {
	c := &p.cmdq
	p.metrics.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rmb_peer_command_queues", Help: "msgbus.<cmd> lists in use (bound: MaxCommandQueues).",
		}, func() float64 { c.mu.Lock(); defer c.mu.Unlock(); return float64(len(c.q)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rmb_peer_command_queue_bytes", Help: "Estimated bytes in all msgbus.<cmd> lists (bound: MaxCommandBytes).",
		}, func() float64 { c.mu.Lock(); defer c.mu.Unlock(); return float64(c.total) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rmb_peer_answer_cache_bytes", Help: "Bytes of answers kept for re-sent requests (bound: MaxAnswerCacheBytes).",
		}, func() float64 { p.seenMu.Lock(); defer p.seenMu.Unlock(); return float64(p.answerBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "rmb_peer_e2e_keys", Help: "Shared keys of other twins kept for encryption (bound: 4096).",
		}, func() float64 { return float64(p.e2e.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rmb_peer_e2e_keys_evicted_total", Help: "Shared keys dropped from the full key cache (least recently used first).",
		}, func() float64 { return float64(p.e2e.Evicted()) }),
	)
}

// idleForget is how long an empty command list stays counted after its
// last push.
const idleForget = 10 * time.Second

// admit reserves n bytes of queue for an entry with the given deadline,
// or returns the reason it is refused.
func (p *Peer) admit(queue string, n int, deadline time.Time) string {
	c := &p.cmdq
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.q[queue]
	if q == nil {
		if len(c.q) >= p.opts.MaxCommandQueues {
			return dropCommandQueues
		}
		q = &cmdQueue{}
		c.q[queue] = q
	}
	switch {
	case q.bytes+int64(n) > p.opts.MaxQueueBytes:
		return dropQueueBytes
	case c.total+int64(n) > p.opts.MaxCommandBytes:
		return dropCommandBytes
	}
	q.bytes += int64(n)
	q.admitted += int64(n)
	q.inflight += int64(n)
	c.total += int64(n)
	q.last = time.Now()
	if d := deadline.Unix(); q.due == 0 || d < q.due {
		q.due = d
	}
	return ""
}

// settled reports the end of the push of n bytes admitted to queue: it
// landed, or it failed and its bytes are given back.
func (p *Peer) settled(queue string, n int, ok bool) {
	c := &p.cmdq
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.q[queue]; q != nil {
		q.inflight -= int64(n)
		if !ok {
			// A measurement since may already have left it out.
			back := min(int64(n), max(q.bytes, 0))
			q.bytes -= back
			c.total -= back
		}
	}
}

// measuredBytes is the estimate of a list that held n bytes when a
// measurement ran, which started when the list's admitted and inflight
// counts were as given. Pushes in flight at the start landed before the
// measurement (and are counted twice) or after (and are counted once);
// admissions since are added: the estimate errs on the side of too much.
func (q *cmdQueue) measuredBytes(n, admitted, inflight int64) int64 {
	return n + inflight + q.admitted - admitted
}

// remeasure learns the bytes of queue from Redis (MEMORY USAGE, which
// walks the list's nodes without copying them); when a measurement runs
// already it waits for that one instead. It reports whether the estimate
// is now fresh.
func (p *Peer) remeasure(ctx context.Context, queue string) bool {
	c := &p.cmdq
	c.mu.Lock()
	q := c.q[queue]
	if q == nil {
		c.mu.Unlock()
		return false
	}
	if ch := q.measuring; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
			return true
		case <-ctx.Done():
			return false
		}
	}
	done := make(chan struct{})
	q.measuring = done
	admitted, inflight := q.admitted, q.inflight
	c.mu.Unlock()
	defer close(done)
	n, err := p.rdb.MemoryUsage(ctx, queue, 0).Result()
	if errors.Is(err, redis.Nil) {
		n, err = 0, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	q.measuring = nil
	if err != nil || c.q[queue] != q {
		return false
	}
	nb := q.measuredBytes(n, admitted, inflight)
	c.total += nb - q.bytes
	q.bytes = nb
	return true
}

// sweepScript removes from KEYS[1] the entries whose deadline ("now" +
// "exp", unix seconds) is at or before ARGV[1], and returns {bytes left,
// earliest deadline left or 0, entries left, {removed entries}}. Entries
// without both fields are kept. The list is rewritten only when
// something expired, in the same order (RPUSH of what LRANGE returned
// head first). A field is found by its key: inside a JSON string a
// quote is always escaped, so `"exp":` can only be a key; "now" is the
// last field of what the peer writes, looked for near the end.
const sweepScript = `
local all = redis.call('LRANGE', KEYS[1], 0, -1)
local now = tonumber(ARGV[1])
local keep, gone = {}, {}
local bytes, due = 0, 0
for i = 1, #all do
  local v = all[i]
  local exp = tonumber(string.match(v, '"exp":(%d+)'))
  local t = tonumber(string.match(v, '"now":(%-?%d+)}%s*$', math.max(1, #v - 64)))
  if exp and t and t + exp <= now then
    gone[#gone + 1] = v
  else
    keep[#keep + 1] = v
    bytes = bytes + #v
    if exp and t and (due == 0 or t + exp < due) then due = t + exp end
  end
end
if #gone > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 999, #keep)))
  end
end
return {bytes, due, #keep, gone}
`

var sweepSHA = func() string {
	h := sha1.Sum([]byte(sweepScript))
	return hex.EncodeToString(h[:])
}()

// commandSweeper sweeps the command lists every CommandSweepInterval.
func (p *Peer) commandSweeper(ctx context.Context) {
	t := time.NewTicker(p.opts.CommandSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.sweepCommands(ctx, time.Now())
		p.sweepRets(time.Now())
	}
}

// sweepCommands runs the sweep script on the lists that may hold an
// entry past its deadline, and measures again (remeasure) those near
// their byte bound, or idle for idleForget; it forgets lists that are
// empty and idle.
func (p *Peer) sweepCommands(ctx context.Context, now time.Time) {
	c := &p.cmdq
	type job struct {
		queue              string
		admitted, inflight int64
		script             bool
	}
	var jobs []job
	c.mu.Lock()
	for name, q := range c.q {
		switch {
		case q.due != 0 && q.due <= now.Unix():
			jobs = append(jobs, job{name, q.admitted, q.inflight, true})
		case q.bytes > p.opts.MaxQueueBytes/4 || c.total > p.opts.MaxCommandBytes/2 && q.bytes > 0 ||
			now.Sub(q.last) > idleForget:
			jobs = append(jobs, job{queue: name})
		}
	}
	c.mu.Unlock()
	for _, j := range jobs {
		if ctx.Err() != nil {
			return
		}
		if !j.script {
			if p.remeasure(ctx, j.queue) {
				c.forgetIdle(j.queue, now)
			}
			continue
		}
		res, err := p.runSweep(ctx, j.queue, now)
		if err != nil {
			p.log.Warn("command list sweep failed", "queue", j.queue, "err", err)
			continue
		}
		c.mu.Lock()
		if q := c.q[j.queue]; q != nil {
			nb := q.measuredBytes(res.bytes, j.admitted, j.inflight)
			c.total += nb - q.bytes
			q.bytes = nb
			q.due = res.due
		}
		c.mu.Unlock()
		c.forgetIdle(j.queue, now)
		if len(res.gone) > 0 {
			p.unserved(ctx, j.queue, res.gone)
		}
	}
}

// forgetIdle forgets queue when it was measured empty and nothing was
// admitted to it for idleForget.
func (c *cmdQueues) forgetIdle(queue string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if q := c.q[queue]; q != nil && q.bytes <= 0 && now.Sub(q.last) > idleForget {
		c.total -= q.bytes
		delete(c.q, queue)
	}
}

type sweepResult struct {
	bytes, due, left int64
	gone             []string
}

func (p *Peer) runSweep(ctx context.Context, queue string, now time.Time) (*sweepResult, error) {
	keys := []string{queue}
	v, err := p.rdb.EvalSha(ctx, sweepSHA, keys, now.Unix()).Slice()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		v, err = p.rdb.Eval(ctx, sweepScript, keys, now.Unix()).Slice()
	}
	if err != nil {
		return nil, err
	}
	if len(v) != 4 {
		return nil, fmt.Errorf("sweep script returned %d values", len(v))
	}
	r := &sweepResult{}
	r.bytes, _ = v[0].(int64)
	r.due, _ = v[1].(int64)
	r.left, _ = v[2].(int64)
	gone, _ := v[3].([]any)
	for _, g := range gone {
		if s, ok := g.(string); ok {
			r.gone = append(r.gone, s)
		}
	}
	return r, nil
}

// unserved answers the requests a sweep removed from queue with 408 and
// dead-letters them, on up to Workers goroutines.
func (p *Peer) unserved(ctx context.Context, queue string, gone []string) {
	sem := make(chan struct{}, p.opts.Workers)
	var wg sync.WaitGroup
	for _, raw := range gone {
		p.metrics.dropped.WithLabelValues(dropUnserved).Inc()
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			p.answerUnserved(ctx, queue, raw)
		})
	}
	wg.Wait()
}

func (p *Peer) answerUnserved(ctx context.Context, queue, raw string) {
	const reason = "no service took the request from its command list before its deadline"
	d := &DeadLetter{Queue: queue, Message: raw, Reason: reason, Code: envelope.CodeTimeout}
	req, err := redisapi.ParseIncomingRequestString(raw)
	if err == nil {
		d.UID = req.Ref
		if len(raw) > deadLetterDatLimit {
			// Expired: the payload is of no use to anyone, and keeping it
			// would let the dead-letter list grow by what the lists held.
			d.Details = "dat of " + strconv.Itoa(len(req.Data)) + " bytes left out"
			req.Data = ""
			d.Message = string(req.AppendJSON(nil))
		}
	} else if len(raw) > deadLetterDatLimit {
		d.Details = "message of " + strconv.Itoa(len(raw)) + " bytes cut"
		d.Message = raw[:deadLetterDatLimit]
	}
	var src address
	if err == nil {
		src, err = parseAddress(req.Source)
		d.Dst = src.twin
	}
	p.deadLetter(ctx, d)
	if err != nil {
		return
	}
	p.sendError(ctx, req.Ref, src, envelope.CodeTimeout,
		"no service took the request for "+strconv.Quote(req.Command)+" before its deadline", time.Time{})
}
