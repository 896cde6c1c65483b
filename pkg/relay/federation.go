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

	"github.com/prometheus/client_golang/prometheus"

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
	id      string     // its key in the federation store; "" in memory only
	size    int64      // what it counts against the bytes bounds
}

func newFedJob(rt *envelope.Routing, m Message, relays []string) *fedJob {
	j := &fedJob{
		msg:    m,
		relays: relays,
		src:    SessionKey{Twin: rt.Source.Twin, SID: string(rt.Source.Session)},
		size:   int64(len(m.Data)),
	}
	for _, d := range relays {
		j.size += int64(len(d))
	}
	if rt.Kind == envelope.KindRequest {
		j.uid = string(rt.UID)
	}
	return j
}

// fedDomain is the queue of one destination domain. Every job the relay
// accepted for the domain is held here until it was posted or given up:
// waiting for a worker (ready), being posted, or waiting out a backoff.
type fedDomain struct {
	name    string
	ready   []*fedJob               // FIFO, waiting for a worker
	backoff map[*fedJob]*time.Timer // jobs waiting out a retry backoff
	held    int                     // jobs: ready, being posted, in backoff
	bytes   int64                   // their sizes
	workers int                     // running workers, at most FederationWorkers
	idle    time.Time               // when held fell to 0
}

// fedShare is what one source twin holds in the federation queues.
type fedShare struct {
	jobs  int
	bytes int64
}

// federator sends envelopes to other relays. A job goes to the queue of
// the best-ranked relay of its twin; up to FederationWorkers workers per
// domain, started when jobs are ready and ending when none is, try the
// twin's relays in rank order and, when all fail with a network error or a
// 5xx, schedule another round after a backoff, until the envelope's TTL
// runs out.
//
// Every job the relay accepted counts against the bounds until it is done,
// also while it waits out a backoff: FederationQueueSize and
// FederationQueueBytes per domain, FederationMaxJobs and FederationMaxBytes
// in all. A domain without jobs for FederationIdleTimeout is forgotten, with
// its metric series. With a federation store (Redis), a job is written
// there before it counts as accepted and removed when done, so a relay
// killed with -9 posts it after its restart.
type federator struct {
	// Set by newFederator, read-only afterwards.
	r       *Relay
	ranker  *ranker
	replay  *replayGuard    // receiving side: accepted envelopes
	durable *fedStore       // nil without Options.FederationRedis
	shared  *sharedReplay   // a cluster's replay guard; nil outside a cluster or without FederationRedis
	ctx     context.Context // cancelled by stop
	cancel  context.CancelFunc

	wg      sync.WaitGroup // workers and the sweeper
	sending atomic.Int64   // jobs a worker is posting

	mu       sync.Mutex // guards the following
	domains  map[string]*fedDomain
	jobs     int                  // held jobs, all domains
	bytes    int64                // their sizes
	bySource map[uint32]*fedShare // held jobs by source twin; no zero entries
	lastPost map[string]time.Time // domains with metric series, by last POST
	stopped  bool
}

func newFederator(r *Relay) *federator {
	f := &federator{
		r:        r,
		ranker:   newRanker(r.opts.RankerPeriod, r.opts.Now),
		replay:   newReplayGuard(replayGuardSize),
		domains:  make(map[string]*fedDomain),
		lastPost: make(map[string]time.Time),
		bySource: make(map[uint32]*fedShare),
	}
	if r.opts.FederationRedis != nil {
		f.durable = newFedStore(r.opts.FederationRedis, r.fedStoreName())
		if r.cl != nil {
			f.shared = newSharedReplay(r.opts.FederationRedis, r.opts.Domains[0], replayGuardSize)
		}
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// start recovers the jobs of a previous incarnation from the federation
// store and starts the sweeper of idle domains.
func (f *federator) start(ctx context.Context) error {
	if f.durable != nil {
		if err := f.recover(ctx); err != nil {
			return err
		}
	}
	f.wg.Add(1)
	go f.sweeper()
	return nil
}

// recover queues the jobs found in the federation store.
func (f *federator) recover(ctx context.Context) error {
	r := f.r
	seen := make(map[string]bool)
	n := 0
	err := f.durable.load(ctx, r.opts.MaxEnvelopeSize, func(j *fedJob, err error) {
		if err != nil {
			r.counters.drop(dropFederation)
			r.log.Warn("unreadable federation job removed", "err", err)
			return
		}
		if seen[j.id] {
			return // HSCAN may return a field twice
		}
		seen[j.id] = true
		if f.queueStored(j) {
			n++
		}
	})
	if n > 0 {
		r.log.Info("federation jobs recovered", "jobs", n)
	}
	return err
}

// queueStored queues a job read from the federation store (recovered or
// adopted), or gives it up when its TTL ran out or the queue is full.
func (f *federator) queueStored(j *fedJob) bool {
	if !j.msg.Deadline.After(f.r.opts.Now()) {
		f.giveUp(j, "ttl ran out", dropFederation)
		f.forget(j)
		return false
	}
	name := f.domainOf(j)
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return false // stays in the store for the next start
	}
	d := f.domain(name)
	ok := f.fits(d, j)
	if ok {
		f.hold(d, j)
		f.ready(d, j)
	}
	f.mu.Unlock()
	if !ok {
		f.giveUp(j, "federation queue full", dropFederationFull)
		f.forget(j)
		return false
	}
	return true
}

// domainOf is the lower-cased best-ranked relay of j's twin.
func (f *federator) domainOf(j *fedJob) string {
	return strings.ToLower(f.ranker.rank(j.relays)[0])
}

// errFedStopped is the answer of a federator that has stopped.
var errFedStopped = errors.New("relay: federation stopped")

// enqueue accepts j for its best-ranked relay. It fails with errFedAddress
// when every relay of the twin is an address the relay refuses, errFedFull
// over a bound, errFedStopped after stop, or the federation store's error.
func (f *federator) enqueue(j *fedJob) error {
	if !f.r.opts.FederationAllowPrivate && !slices.ContainsFunc(j.relays, func(d string) bool { return !refusedLiteral(d) }) {
		return errFedAddress
	}
	name := f.domainOf(j)
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return errFedStopped
	}
	d := f.domain(name)
	if !f.fits(d, j) {
		f.mu.Unlock()
		return errFedFull
	}
	f.hold(d, j)
	f.mu.Unlock()
	if f.durable != nil {
		if err := f.durable.push(f.ctx, j, f.r.opts.FederationMaxJobs, f.r.opts.FederationMaxBytes); err != nil {
			f.mu.Lock()
			f.release(d, j)
			f.mu.Unlock()
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		// Counted by stop, kept by the store.
		return nil
	}
	f.ready(d, j)
	return nil
}

// domain returns the queue of name, making it; f.mu is held.
func (f *federator) domain(name string) *fedDomain {
	d := f.domains[name]
	if d == nil {
		d = &fedDomain{name: name, backoff: make(map[*fedJob]*time.Timer)}
		f.domains[name] = d
	}
	return d
}

// fits reports whether j fits the bounds; f.mu is held. A source twin may
// hold as much as one domain, so that one twin sending to many dead
// domains cannot take all of FederationMaxJobs or FederationMaxBytes.
func (f *federator) fits(d *fedDomain, j *fedJob) bool {
	o := &f.r.opts
	s := f.bySource[j.src.Twin]
	if s == nil {
		s = &fedShare{}
	}
	return d.held < o.FederationQueueSize && d.bytes+j.size <= o.FederationQueueBytes &&
		s.jobs < o.FederationQueueSize && s.bytes+j.size <= o.FederationQueueBytes &&
		f.jobs < o.FederationMaxJobs && f.bytes+j.size <= o.FederationMaxBytes
}

// hold counts j against the bounds; f.mu is held.
func (f *federator) hold(d *fedDomain, j *fedJob) {
	d.held++
	d.bytes += j.size
	f.jobs++
	f.bytes += j.size
	s := f.bySource[j.src.Twin]
	if s == nil {
		s = &fedShare{}
		f.bySource[j.src.Twin] = s
	}
	s.jobs++
	s.bytes += j.size
}

// release undoes hold; f.mu is held.
func (f *federator) release(d *fedDomain, j *fedJob) {
	d.held--
	d.bytes -= j.size
	f.jobs--
	f.bytes -= j.size
	if s := f.bySource[j.src.Twin]; s != nil {
		if s.jobs--; s.jobs <= 0 {
			delete(f.bySource, j.src.Twin)
		} else {
			s.bytes -= j.size
		}
	}
	if d.held == 0 {
		d.idle = f.r.opts.Now()
	}
}

// ready queues j for a worker, starting one if fewer than
// FederationWorkers run; f.mu is held and f is not stopped.
func (f *federator) ready(d *fedDomain, j *fedJob) {
	d.ready = append(d.ready, j)
	if d.workers < f.r.opts.FederationWorkers {
		d.workers++
		f.wg.Add(1)
		go f.worker(d)
	}
}

// done ends j, posted or given up: out of the store and the bounds.
func (f *federator) done(d *fedDomain, j *fedJob) {
	f.forget(j)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.release(d, j)
}

// forget removes j from the federation store.
func (f *federator) forget(j *fedJob) {
	if f.durable == nil || j.id == "" {
		return
	}
	if err := f.durable.remove(j.id); err != nil {
		// It will be posted again after a restart; the receiver's replay
		// guard and the peer suppress the duplicate.
		f.r.log.Warn("federation job not removed from redis", "err", err)
	}
}

// depth is the number of jobs waiting for a worker.
func (f *federator) depth() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, d := range f.domains {
		n += len(d.ready)
	}
	return n
}

// held is the number of jobs accepted and not done, and their bytes.
func (f *federator) held() (int, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jobs, f.bytes
}

// heldByDomain is the number of jobs held per domain.
func (f *federator) heldByDomain() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.domains))
	for name, d := range f.domains {
		m[name] = d.held
	}
	return m
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

// stop ends the workers, retry timers and the sweeper. Without a
// federation store, the jobs still held are dropped and counted; with one,
// they stay there for the next start.
func (f *federator) stop() {
	f.mu.Lock()
	f.stopped = true
	for _, d := range f.domains {
		for _, t := range d.backoff {
			t.Stop()
		}
	}
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.durable == nil {
		f.r.counters.drops[dropShutdown].Add(uint64(f.jobs))
	} else if f.jobs > 0 {
		f.r.log.Info("federation jobs left in redis for the next start", "jobs", f.jobs)
	}
}

// worker posts the ready jobs of d and ends when there is none.
func (f *federator) worker(d *fedDomain) {
	defer f.wg.Done()
	for {
		f.mu.Lock()
		if len(d.ready) == 0 || f.ctx.Err() != nil {
			d.workers--
			f.mu.Unlock()
			return
		}
		j := d.ready[0]
		d.ready[0] = nil
		d.ready = d.ready[1:]
		f.sending.Add(1)
		f.mu.Unlock()
		f.send(d, j)
		f.sending.Add(-1)
	}
}

// send runs one round of attempts for j, a job of d.
func (f *federator) send(d *fedDomain, j *fedJob) {
	r := f.r
	if !j.msg.Deadline.After(r.opts.Now()) {
		f.giveUp(j, "ttl ran out", dropFederation)
		f.done(d, j)
		return
	}
	retry, refusedAddr := false, false
	for _, dom := range f.ranker.rank(j.relays) {
		status, err := f.post(dom, j)
		if f.ctx.Err() != nil {
			return // stopped: counted (or kept) by stop
		}
		switch {
		case err == nil && status >= 200 && status < 300:
			r.metrics.fedResults.WithLabelValues(dom, "success").Inc()
			r.counters.fedMsgsOut.Add(1)
			r.counters.fedBytesOut.Add(uint64(len(j.msg.Data)))
			f.done(d, j)
			return
		case errors.Is(err, errFedAddress):
			r.metrics.fedResults.WithLabelValues(dom, "refused").Inc()
			refusedAddr = true
			r.log.Debug("federation to a refused address", "domain", dom)
		case err != nil || status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
			r.metrics.fedResults.WithLabelValues(dom, "failure").Inc()
			f.ranker.fail(dom)
			retry = true
			r.log.Debug("federation attempt failed", "domain", dom, "status", status, "err", err)
		default:
			// The relay refused the envelope for good (404: not its twin).
			r.metrics.fedResults.WithLabelValues(dom, "refused").Inc()
			r.log.Debug("federation refused", "domain", dom, "status", status)
		}
	}
	if !retry {
		if refusedAddr {
			f.giveUp(j, "relay address refused", dropFedAddress)
		} else {
			f.giveUp(j, "refused by every relay of the twin", dropFederation)
		}
		f.done(d, j)
		return
	}
	backoff := min(r.opts.RetryBackoff<<min(j.attempt, 20), r.opts.MaxRetryBackoff)
	backoff += rand.N(backoff/4 + 1)
	if !r.opts.Now().Add(backoff).Before(j.msg.Deadline) {
		f.giveUp(j, "ttl ran out", dropFederation)
		f.done(d, j)
		return
	}
	j.attempt++
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	d.backoff[j] = time.AfterFunc(backoff, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.stopped {
			return
		}
		delete(d.backoff, j)
		f.ready(d, j)
	})
}

// post sends j to domain and answers the HTTP status.
func (f *federator) post(domain string, j *fedJob) (int, error) {
	r := f.r
	f.mu.Lock()
	f.lastPost[domain] = r.opts.Now()
	f.mu.Unlock()
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

// giveUp drops j (counted under reason) and tells the sender when j is a
// request.
func (f *federator) giveUp(j *fedJob, why string, reason dropReason) {
	r := f.r
	r.counters.drop(reason)
	r.log.Info("federation gave up", "to_relays", j.relays, "src", j.src.String(), "reason", why)
	if j.uid != "" {
		r.sendOwn(j.src, envelope.NewError(j.uid, envelope.CodeUndeliverable, msgUndeliverable, envelope.DefaultTTL), r.opts.Now())
		r.counters.errorsSent.Add(1)
	}
}

// sweeper forgets, every quarter of FederationIdleTimeout, the domains
// without jobs (and the metric series of domains not posted to) for
// FederationIdleTimeout, and prunes the ranker.
func (f *federator) sweeper() {
	defer f.wg.Done()
	idle := f.r.opts.FederationIdleTimeout
	t := time.NewTicker(max(idle/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
			f.sweep(f.r.opts.Now().Add(-idle))
		}
	}
}

// sweep forgets domains idle since before cutoff.
func (f *federator) sweep(cutoff time.Time) {
	f.mu.Lock()
	for name, d := range f.domains {
		if d.held == 0 && d.workers == 0 && d.idle.Before(cutoff) {
			delete(f.domains, name)
		}
	}
	var stale []string
	for name, t := range f.lastPost {
		if t.Before(cutoff) {
			delete(f.lastPost, name)
			stale = append(stale, name)
		}
	}
	f.mu.Unlock()
	for _, name := range stale {
		f.r.metrics.fedResults.DeletePartialMatch(prometheus.Labels{"domain": name})
	}
	f.ranker.sweep()
}

// ranker orders a twin's relays by their failures over the last period,
// fewest first; ties keep the registrar's order.
type ranker struct {
	period time.Duration
	now    func() time.Time

	mu       sync.Mutex // guards failures
	failures map[string][]time.Time
}

// maxFailures bounds the failure times kept per domain, maxRanked the
// domains with failures.
const (
	maxFailures = 1024
	maxRanked   = 4096
)

func newRanker(period time.Duration, now func() time.Time) *ranker {
	return &ranker{period: period, now: now, failures: make(map[string][]time.Time)}
}

func (k *ranker) fail(domain string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	f := k.prune(domain, now)
	if f == nil && len(k.failures) >= maxRanked {
		for d := range k.failures { // full: forget any other domain
			delete(k.failures, d)
			break
		}
	}
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

// sweep forgets the failures older than the period.
func (k *ranker) sweep() {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	for d := range k.failures {
		k.prune(d, now)
	}
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
// twin is unknown), 429 over the source twin's rate limit, 403 when the
// routing rules deny it, 404 when its
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
	// The source twin's rate limit, as on its WebSocket sessions; checked
	// once the signature proved the source, so nobody spends another
	// twin's budget. The sending relay retries 429 after a backoff.
	if r.limiter != nil && !r.allowRate(src, len(body), now) {
		r.counters.drop(dropRateLimited)
		http.Error(w, msgRateLimited, http.StatusTooManyRequests)
		return
	}
	if rt.TTL(now) <= 0 {
		// Accepted and dropped: a retry would not make it younger.
		r.counters.drop(dropExpired)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	dl := deadline(&rt)
	if deadlineTooFar(dl, now) {
		// No peer stamps such a deadline (they clamp the TTL); remembering
		// it for replays would take memory for as long as it claims.
		r.counters.drop(dropFuture)
		http.Error(w, "envelope deadline too far in the future", http.StatusBadRequest)
		return
	}
	if p := r.policy.Load(); !p.allows(&rt) {
		r.counters.drop(dropDenied)
		http.Error(w, msgDenied, http.StatusForbidden)
		return
	}
	key := replayKeyOf(&rt)
	if r.fed.isReplay(key, now) {
		// Accepted before: say so again, deliver nothing.
		r.counters.drop(dropReplay)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	m := Message{Data: body, Deadline: dl}
	dst := SessionKey{Twin: rt.Destination.Twin, SID: string(rt.Destination.Session)}
	var res routeResult
	held := false
	if dst.SID == broadcastSID {
		// Copies to the twin's live sessions; when none is live, stored
		// for its session without id.
		held, res = r.broadcast(dst.Twin, m), routedBroadcast
		dst.SID = ""
	} else if s := r.lookup(dst); s != nil {
		res, err = s.deliver(m)
		held = true
	} else if r.cl != nil {
		res, held, err = r.cl.deliver(dst, m)
	}
	if !held {
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
	r.fed.accepted(key, dl, now)
	r.counters.routed[res].Add(1)
	w.WriteHeader(http.StatusAccepted)
}

// maxClockSkew is how far an envelope's deadline may lie beyond now +
// envelope.MaxTTL before federation refuses it.
const maxClockSkew = time.Minute

// replayGuardSize bounds the envelopes remembered against replays: at
// about 100 bytes each, 128 Ki entries take some 13 MiB.
const replayGuardSize = 1 << 17

// maxRedeliveries is how often an envelope that federation accepted
// before is delivered again. Re-sending the same signed envelope is how
// peers recover what a crash lost: a caller whose answer was lost (a relay
// on the way back died with it, or the caller died with it unread in its
// socket) re-sends the request with the same uid, at most three times
// before the deadline and once after its own restart; the destination
// peer answers each copy from its answer cache, so the same signed answer
// crosses federation again. Only the first request reaches the service;
// the peers suppress the other copies. Copies beyond that are replays:
// 202, not delivered.
const maxRedeliveries = 4

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
// uid) is delivered at most maxRedeliveries times more and then answered
// 202 without being delivered. It holds at most max entries: when full,
// the one closest to its deadline is forgotten first (a replay of it would
// then be delivered, and the destination peer's own duplicate suppression
// is the last line).
type replayGuard struct {
	max int

	mu      sync.Mutex               // guards the following
	entries map[replayKey]guardEntry // the envelopes accepted
	order   replayHeap               // the same entries by deadline, for expiry and eviction
}

type guardEntry struct {
	deadline int64 // unix seconds
	again    uint8 // times delivered again
}

func newReplayGuard(max int) *replayGuard {
	return &replayGuard{max: max, entries: make(map[replayKey]guardEntry)}
}

// seen reports whether key is recorded and not past its deadline.
func (g *replayGuard) seen(key replayKey, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.entries[key]
	return ok && e.deadline >= now.Unix()
}

// again reports whether the envelope recorded under key may be delivered
// once more (maxRedeliveries), and counts it.
func (g *replayGuard) again(key replayKey) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.entries[key]
	if !ok || e.again >= maxRedeliveries {
		return false
	}
	e.again++
	g.entries[key] = e
	return true
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
	g.entries[key] = guardEntry{deadline: d}
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

// msgFedAddress answers an envelope whose destination's relays are all
// addresses the relay refuses to federate to.
const msgFedAddress = "destination relay address refused"

// federate hands m to federation, to the relays of its destination twin,
// and answers like route.
func (r *Relay) federate(rt *envelope.Routing, m Message, relays []string) (routeResult, uint32, string) {
	err := r.fed.enqueue(newFedJob(rt, m, relays))
	switch {
	case err == nil:
		return routedFederated, 0, ""
	case errors.Is(err, errFedAddress):
		r.counters.drop(dropFedAddress)
		return 0, envelope.CodeUndeliverable, msgFedAddress
	case errors.Is(err, errFedFull):
		r.counters.drop(dropFederationFull)
		return 0, envelope.CodeUndeliverable, msgFedQueueFull
	case errors.Is(err, errFedStopped):
		r.counters.drop(dropShutdown)
		return 0, envelope.CodeUndeliverable, msgFedQueueFull
	default:
		r.counters.drop(dropStoreError)
		r.log.Error("federation store push failed", "err", err)
		return 0, envelope.CodeInternal, msgStoreFailed
	}
}
