package relay

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// fedJob is one envelope on its way to another relay.
type fedJob struct {
	msg     Message
	relays  []string   // the destination twin's relays, registrar order
	src     SessionKey // the local sender, for the error envelope
	uid     string     // set for requests only: they get an error envelope
	attempt int        // rounds tried so far
}

func newFedJob(rt *envelope.Routing, m Message, relays []string) *fedJob {
	j := &fedJob{
		msg:    m,
		relays: relays,
		src:    SessionKey{Twin: rt.Source.Twin, SID: string(rt.Source.Session)},
	}
	if rt.Kind == envelope.KindRequest {
		j.uid = string(rt.UID)
	}
	return j
}

// federator sends envelopes to other relays: one bounded queue and
// FederationWorkers workers per destination domain, created on first use.
// A job goes to the queue of the best-ranked relay of its twin; a worker
// tries the twin's relays in rank order and, when all fail with a network
// error or a 5xx, schedules another round after a backoff, until the
// envelope's TTL runs out.
type federator struct {
	// Set by newFederator, read-only afterwards.
	r      *Relay
	ranker *ranker
	replay *replayGuard    // receiving side: accepted envelopes
	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc

	wg      sync.WaitGroup // workers and retry timers
	sending atomic.Int64   // jobs a worker is posting

	mu      sync.Mutex // guards the following
	queues  map[string]chan *fedJob
	stopped bool
}

func newFederator(r *Relay) *federator {
	f := &federator{
		r:      r,
		ranker: newRanker(r.opts.RankerPeriod, r.opts.Now),
		replay: newReplayGuard(replayGuardSize),
		queues: make(map[string]chan *fedJob),
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// enqueue queues j for its best-ranked relay; false when that queue is full
// or the federator has stopped.
func (f *federator) enqueue(j *fedJob) bool {
	q := f.queue(f.ranker.rank(j.relays)[0])
	if q == nil {
		return false
	}
	select {
	case q <- j:
		return true
	default:
		return false
	}
}

// queue returns the queue of domain, starting its workers on first use.
func (f *federator) queue(domain string) chan *fedJob {
	domain = strings.ToLower(domain)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil
	}
	q := f.queues[domain]
	if q == nil {
		q = make(chan *fedJob, f.r.opts.FederationQueueSize)
		f.queues[domain] = q
		for range f.r.opts.FederationWorkers {
			f.wg.Add(1)
			go f.worker(q)
		}
	}
	return q
}

func (f *federator) depth() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, q := range f.queues {
		n += len(q)
	}
	return n
}

// shutdownDrain bounds how long a relay that stops keeps posting what its
// federation queues hold.
const shutdownDrain = 5 * time.Second

// drain lets the workers post what is queued, until nothing is queued or
// being posted, ctx ends or shutdownDrain passed. Jobs waiting out a
// retry backoff are not waited for. The sessions are closed by then, so
// the queues only shrink (apart from such retries).
func (f *federator) drain(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, shutdownDrain)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for f.depth() > 0 || f.sending.Load() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stop ends the workers and retry timers; queued jobs are dropped and
// counted.
func (f *federator) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range f.queues {
		f.r.counters.drops[dropShutdown].Add(uint64(len(q)))
	}
}

func (f *federator) worker(q chan *fedJob) {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case j := <-q:
			f.sending.Add(1)
			f.send(j)
			f.sending.Add(-1)
		}
	}
}

// send runs one round of attempts for j.
func (f *federator) send(j *fedJob) {
	r := f.r
	if !j.msg.Deadline.After(r.opts.Now()) {
		f.giveUp(j, "ttl ran out")
		return
	}
	retry := false
	for _, d := range f.ranker.rank(j.relays) {
		status, err := f.post(d, j)
		switch {
		case err == nil && status >= 200 && status < 300:
			r.metrics.fedResults.WithLabelValues(d, "success").Inc()
			r.counters.fedMsgsOut.Add(1)
			r.counters.fedBytesOut.Add(uint64(len(j.msg.Data)))
			return
		case err != nil || status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
			r.metrics.fedResults.WithLabelValues(d, "failure").Inc()
			f.ranker.fail(d)
			retry = true
			r.log.Debug("federation attempt failed", "domain", d, "status", status, "err", err)
		default:
			// The relay refused the envelope for good (404: not its twin).
			r.metrics.fedResults.WithLabelValues(d, "refused").Inc()
			r.log.Debug("federation refused", "domain", d, "status", status)
		}
		if f.ctx.Err() != nil {
			r.counters.drop(dropShutdown)
			return
		}
	}
	if !retry {
		f.giveUp(j, "refused by every relay of the twin")
		return
	}
	backoff := min(r.opts.RetryBackoff<<min(j.attempt, 20), r.opts.MaxRetryBackoff)
	backoff += rand.N(backoff/4 + 1)
	if !r.opts.Now().Add(backoff).Before(j.msg.Deadline) {
		f.giveUp(j, "ttl ran out")
		return
	}
	j.attempt++
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		t := time.NewTimer(backoff)
		defer t.Stop()
		select {
		case <-t.C:
			if !f.enqueue(j) {
				if f.ctx.Err() != nil {
					r.counters.drop(dropShutdown)
					return
				}
				f.giveUp(j, "federation queue full")
			}
		case <-f.ctx.Done():
			r.counters.drop(dropShutdown)
		}
	}()
}

// post sends j to domain and answers the HTTP status.
func (f *federator) post(domain string, j *fedJob) (int, error) {
	r := f.r
	timeout := min(r.opts.FederationTimeout, time.Until(j.msg.Deadline))
	ctx, cancel := context.WithTimeout(f.ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.opts.FederationScheme+"://"+domain+"/", bytes.NewReader(j.msg.Data))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := r.opts.FederationClient.Do(req)
	if err != nil {
		return 0, err
	}
	// Drain a little so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// giveUp drops j and tells the sender when j is a request.
func (f *federator) giveUp(j *fedJob, why string) {
	r := f.r
	r.counters.drop(dropFederation)
	r.log.Info("federation gave up", "to_relays", j.relays, "src", j.src.String(), "reason", why)
	if j.uid != "" {
		r.sendOwn(j.src, envelope.NewError(j.uid, envelope.CodeUndeliverable, msgUndeliverable, envelope.DefaultTTL), r.opts.Now())
		r.counters.errorsSent.Add(1)
	}
}

// ranker orders a twin's relays by their failures over the last period,
// fewest first; ties keep the registrar's order.
type ranker struct {
	period time.Duration
	now    func() time.Time

	mu       sync.Mutex // guards failures
	failures map[string][]time.Time
}

// maxFailures bounds the failure times kept per domain.
const maxFailures = 1024

func newRanker(period time.Duration, now func() time.Time) *ranker {
	return &ranker{period: period, now: now, failures: make(map[string][]time.Time)}
}

func (k *ranker) fail(domain string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	f := k.prune(domain, now)
	if len(f) >= maxFailures {
		f = f[1:]
	}
	k.failures[domain] = append(f, now)
}

// prune drops failure times older than the period; k.mu is held.
func (k *ranker) prune(domain string, now time.Time) []time.Time {
	f := k.failures[domain]
	i := 0
	for i < len(f) && now.Sub(f[i]) > k.period {
		i++
	}
	if i == len(f) {
		delete(k.failures, domain)
		return nil
	}
	f = f[i:]
	k.failures[domain] = f
	return f
}

// rank returns relays ordered by recent failures (a new slice).
func (k *ranker) rank(relays []string) []string {
	out := slices.Clone(relays)
	if len(out) < 2 {
		return out
	}
	k.mu.Lock()
	now := k.now()
	score := make(map[string]int, len(out))
	for _, d := range out {
		score[d] = len(k.prune(d, now))
	}
	k.mu.Unlock()
	slices.SortStableFunc(out, func(a, b string) int { return score[a] - score[b] })
	return out
}

// handleFederation is the receiving side of federation: POST / with one
// serialized envelope as the body. 413 over the size limit, 400 when it is
// not an envelope, 401 when it is not signed by its source twin (or that
// twin is unknown), 403 when the routing rules deny it, 404 when its
// destination is not a twin of this relay, 409 when it asks to fail fast
// and the destination is offline, 503 when the registrar or the store
// fail, 202 when delivered or stored.
func (r *Relay) handleFederation(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, int64(r.opts.MaxEnvelopeSize)))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			r.counters.drop(dropTooBig)
			http.Error(w, "envelope too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "failed to read body", http.StatusBadRequest)
		return
	}
	r.counters.fedMsgsIn.Add(1)
	r.counters.fedBytesIn.Add(uint64(len(body)))
	e, err := envelope.Unmarshal(body, r.opts.MaxEnvelopeSize)
	var rt envelope.Routing
	if err == nil {
		err = envelope.ReadRouting(body, &rt)
	}
	if err != nil {
		r.counters.drop(dropMalformed)
		http.Error(w, "malformed envelope", http.StatusBadRequest)
		return
	}
	src := e.GetSource().GetTwin()
	if src == 0 || len(e.Signature) == 0 {
		r.counters.drop(dropWrongSource)
		http.Error(w, "envelope must be signed by its source twin", http.StatusUnauthorized)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), lookupTimeout)
	defer cancel()
	twin, err := r.opts.Directory.Twin(ctx, src)
	if errors.Is(err, registrar.ErrNotFound) {
		r.counters.drop(dropWrongSource)
		http.Error(w, "unknown source twin", http.StatusUnauthorized)
		return
	}
	if err != nil {
		r.counters.drop(dropLookup)
		http.Error(w, "twin lookup failed", http.StatusServiceUnavailable)
		return
	}
	if err := e.Verify(twin.PublicKey); err != nil {
		r.counters.drop(dropWrongSource)
		http.Error(w, "bad envelope signature", http.StatusUnauthorized)
		return
	}
	now := r.opts.Now()
	if rt.TTL(now) <= 0 {
		// Accepted and dropped: a retry would not make it younger.
		r.counters.drop(dropExpired)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	dl := deadline(&rt)
	if dl.After(now.Add(envelope.MaxTTL*time.Second + maxClockSkew)) {
		// No peer stamps such a deadline (they clamp the TTL); remembering
		// it for replays would take memory for as long as it claims.
		r.counters.drop(dropFuture)
		http.Error(w, "envelope deadline too far in the future", http.StatusBadRequest)
		return
	}
	if p := r.policy.Load(); !p.mayRoute(src, rt.Destination.Twin) {
		r.counters.drop(dropDenied)
		http.Error(w, msgDenied, http.StatusForbidden)
		return
	}
	key := replayKeyOf(&rt)
	if r.fed.replay.seen(key, now) {
		// Accepted before: say so again, deliver nothing.
		r.counters.drop(dropReplay)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	m := Message{Data: body, Deadline: dl}
	dst := SessionKey{Twin: rt.Destination.Twin, SID: string(rt.Destination.Session)}
	var res routeResult
	if s := r.lookup(dst); s != nil {
		res, err = s.deliver(m)
	} else {
		t, lerr := r.opts.Directory.Twin(ctx, dst.Twin)
		switch {
		case errors.Is(lerr, registrar.ErrNotFound):
			r.counters.drop(dropUnknownTwin)
			http.Error(w, msgUnknownTwin, http.StatusNotFound)
			return
		case lerr != nil:
			r.counters.drop(dropLookup)
			http.Error(w, "twin lookup failed", http.StatusServiceUnavailable)
			return
		case !r.isOurs(t.Relays):
			r.counters.drop(dropUnknownTwin)
			http.Error(w, "destination twin is not on this relay", http.StatusNotFound)
			return
		case rt.FailFast():
			r.counters.drop(dropOffline)
			http.Error(w, msgOffline, http.StatusConflict)
			return
		}
		res, err = r.storeFor(dst, m)
	}
	if err != nil {
		_, _, msg := r.storeError(err)
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	// Remembered only once accepted: a sender whose POST failed may try
	// again. (Two identical POSTs racing may both be delivered; the
	// destination peer suppresses the second.)
	r.fed.replay.add(key, dl, now)
	r.counters.routed[res].Add(1)
	w.WriteHeader(http.StatusAccepted)
}

// maxClockSkew is how far an envelope's deadline may lie beyond now +
// envelope.MaxTTL before federation refuses it.
const maxClockSkew = time.Minute

// replayGuardSize bounds the envelopes remembered against replays: at
// about 100 bytes each, 128 Ki entries take some 13 MiB.
const replayGuardSize = 1 << 17

// replayKey identifies a federated envelope: SHA-256 (first 16 bytes) of
// its source and destination (twin and session), kind and uid. Peers
// suppress duplicates by (uid, source, kind); the destination is part of
// the key because one request to N twins is N envelopes with one uid.
type replayKey [16]byte

func replayKeyOf(rt *envelope.Routing) replayKey {
	h := sha256.New()
	var b [4]byte
	field := func(p []byte) {
		binary.BigEndian.PutUint32(b[:], uint32(len(p)))
		h.Write(b[:])
		h.Write(p)
	}
	binary.BigEndian.PutUint32(b[:], rt.Source.Twin)
	h.Write(b[:])
	field(rt.Source.Session)
	binary.BigEndian.PutUint32(b[:], rt.Destination.Twin)
	h.Write(b[:])
	field(rt.Destination.Session)
	h.Write([]byte{byte(rt.Kind)})
	field(rt.UID)
	var k replayKey
	copy(k[:], h.Sum(nil))
	return k
}

// replayGuard remembers the envelopes federation accepted until their
// deadline, so that a replayed POST (same source, destination, kind and
// uid) is answered 202 without being delivered twice. It holds at most
// max entries: when full, the one closest to its deadline is forgotten
// first (a replay of it would then be delivered, and the destination
// peer's own duplicate suppression is the last line).
//
// A consequence worth knowing: a peer that re-sends a request after losing
// its relay (to recover an answer that relay may have lost) is also
// suppressed here when it crosses federation again; the first copy was
// delivered, so its answer normally still comes.
type replayGuard struct {
	max int

	mu      sync.Mutex          // guards the following
	entries map[replayKey]int64 // -> deadline, unix seconds
	order   replayHeap          // the same entries by deadline, for expiry and eviction
}

func newReplayGuard(max int) *replayGuard {
	return &replayGuard{max: max, entries: make(map[replayKey]int64)}
}

// seen reports whether key is recorded and not past its deadline.
func (g *replayGuard) seen(key replayKey, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	d, ok := g.entries[key]
	return ok && d >= now.Unix()
}

// add records key until deadline, forgetting expired entries and, when
// full, those closest to their deadline.
func (g *replayGuard) add(key replayKey, deadline, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := now.Unix()
	for len(g.order) > 0 && g.order[0].deadline < n {
		g.evict()
	}
	if _, ok := g.entries[key]; ok {
		return
	}
	for len(g.entries) >= g.max && len(g.order) > 0 {
		g.evict()
	}
	d := deadline.Unix()
	g.entries[key] = d
	heap.Push(&g.order, replayEntry{key: key, deadline: d})
}

// evict pops the earliest deadline; g.mu is held.
func (g *replayGuard) evict() {
	e := heap.Pop(&g.order).(replayEntry)
	delete(g.entries, e.key)
}

type replayEntry struct {
	key      replayKey
	deadline int64
}

type replayHeap []replayEntry

func (h replayHeap) Len() int           { return len(h) }
func (h replayHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h replayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *replayHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *replayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
