package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// The owner's side of topics: the leases of subscribers, and publishing.
//
// Leases are kept in memory and, when the peer has Redis, in the hash
// LeaseHash (field "<twin>/<pattern>", value leaseRecord JSON), written
// before the subscribe is answered; Run loads the hash before it answers
// anything, so leases survive a restart of the owner's peer. A lease not
// renewed before it expires is deleted by the topic sweeper.

// LeaseHash holds the leases of subscribers to this twin's topics.
const LeaseHash = "msgbus.system.topics.leases"

// leaseRecord is one lease (and the value of a LeaseHash field).
type leaseRecord struct {
	Twin    uint32 `json:"twin"`
	Topic   string `json:"topic"`
	Level   string `json:"level"`
	Expires int64  `json:"expires"` // unix milliseconds
}

func leaseField(twin uint32, pattern string) string {
	return strconv.FormatUint(uint64(twin), 10) + "/" + pattern
}

// leaseSize is what a lease counts against MaxLeaseBytes.
func leaseSize(l *leaseRecord) int64 {
	b, _ := json.Marshal(l)
	return int64(len(b) + len(leaseField(l.Twin, l.Topic)))
}

// topicState is a peer's topic bookkeeping, owner and subscriber side.
type topicState struct {
	opts TopicOptions

	mu     sync.Mutex
	leases map[uint32]map[string]*leaseRecord // by subscriber twin, pattern
	count  int
	bytes  int64
	loaded chan struct{} // closed once LeaseHash was read

	subMu   sync.Mutex
	subs    map[string]*localSub     // by localSub.key()
	remotes map[remoteKey]*remoteSub // leases this peer holds at owners
	nextGo  uint64

	eventsSent     prometheus.Counter
	eventsReceived prometheus.Counter
	eventsAcked    prometheus.Counter
	leaseGauge     prometheus.GaugeFunc
}

func newTopicState(p *Peer, o TopicOptions) *topicState {
	ts := &topicState{
		opts:    o.withDefaults(),
		leases:  make(map[uint32]map[string]*leaseRecord),
		loaded:  make(chan struct{}),
		subs:    make(map[string]*localSub),
		remotes: make(map[remoteKey]*remoteSub),
		eventsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_topic_events_sent_total", Help: "Topic event envelopes sent to subscribers.",
		}),
		eventsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_topic_events_received_total", Help: "Topic events delivered to local subscriptions.",
		}),
		eventsAcked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rmb_peer_topic_events_confirmed_total", Help: "Confirmed topic events acknowledged by subscribers.",
		}),
	}
	ts.leaseGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rmb_peer_topic_leases", Help: "Leases of subscribers to this twin's topics.",
	}, func() float64 {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return float64(ts.count)
	})
	p.metrics.reg.MustRegister(ts.eventsSent, ts.eventsReceived, ts.eventsAcked, ts.leaseGauge)
	return ts
}

// loadLeases reads LeaseHash, retrying while Redis is unavailable.
func (p *Peer) loadLeases(ctx context.Context) error {
	ts := p.topics
	if p.rdb == nil {
		close(ts.loaded)
		return nil
	}
	delay := 100 * time.Millisecond
	for {
		all, err := p.rdb.HGetAll(ctx, LeaseHash).Result()
		if err == nil {
			var bad []string
			now := time.Now().UnixMilli()
			ts.mu.Lock()
			for f, v := range all {
				var l leaseRecord
				if json.Unmarshal([]byte(v), &l) != nil || l.Twin == 0 || CheckTopicPattern(l.Topic) != nil ||
					leaseField(l.Twin, l.Topic) != f || l.Expires <= now {
					bad = append(bad, f)
					continue
				}
				ts.putLocked(&l)
			}
			n := ts.count
			ts.mu.Unlock()
			close(ts.loaded)
			if len(bad) > 0 {
				p.rdb.HDel(ctx, LeaseHash, bad...)
			}
			if n > 0 {
				p.log.Info("loaded topic leases from an earlier run", "leases", n)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.log.Warn("cannot load topic leases from redis; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (ts *topicState) putLocked(l *leaseRecord) {
	m := ts.leases[l.Twin]
	if m == nil {
		m = make(map[string]*leaseRecord)
		ts.leases[l.Twin] = m
	}
	if old := m[l.Topic]; old != nil {
		ts.bytes -= leaseSize(old)
		ts.count--
	}
	m[l.Topic] = l
	ts.count++
	ts.bytes += leaseSize(l)
}

func (ts *topicState) deleteLocked(twin uint32, pattern string) bool {
	m := ts.leases[twin]
	old := m[pattern]
	if old == nil {
		return false
	}
	delete(m, pattern)
	if len(m) == 0 {
		delete(ts.leases, twin)
	}
	ts.count--
	ts.bytes -= leaseSize(old)
	return true
}

// sweepTopicLeases deletes the leases that expired.
func (p *Peer) sweepTopicLeases(ctx context.Context, now time.Time) {
	ts := p.topics
	var gone []string
	ts.mu.Lock()
	for twin, m := range ts.leases {
		for pattern, l := range m {
			if l.Expires <= now.UnixMilli() {
				ts.deleteLocked(twin, pattern)
				gone = append(gone, leaseField(twin, pattern))
			}
		}
	}
	ts.mu.Unlock()
	if len(gone) > 0 {
		p.log.Debug("topic leases expired", "leases", gone)
		if p.rdb != nil {
			if err := p.rdb.HDel(ctx, LeaseHash, gone...).Err(); err != nil {
				p.log.Warn("cannot delete expired topic leases; the next start drops them", "err", err)
			}
		}
	}
}

// topicRequest handles the built-in topic commands; it reports whether
// cmd was one. later runs what may block (handleEnvelope).
func (p *Peer) topicRequest(ctx context.Context, env *envelope.Envelope, src address, cmd string, payload []byte, later func(func())) bool {
	switch cmd {
	case CmdSubscribe, CmdRenew, CmdUnsubscribe:
	case CmdEvent:
		later(func() { p.handleEvent(ctx, env, src, payload) })
		return true
	default:
		return false
	}
	deadline := env.Deadline()
	later(func() {
		data, e := p.handleSubscribe(ctx, src.twin, cmd, payload)
		if e != nil {
			p.sendError(ctx, env.Uid, src, e.Code, e.Message, deadline)
			return
		}
		p.sendAnswer(ctx, env.Uid, src, data, "application/json", nil, deadline)
	})
	return true
}

// handleSubscribe answers a subscribe, renew or unsubscribe from twin.
func (p *Peer) handleSubscribe(ctx context.Context, twin uint32, cmd string, payload []byte) ([]byte, *Error) {
	ts := p.topics
	bad := func(msg string) ([]byte, *Error) {
		p.metrics.dropped.WithLabelValues(dropTopicBad).Inc()
		return nil, &Error{Code: envelope.CodeBadPayload, Message: msg}
	}
	var m subscribeMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		return bad(fmt.Sprintf("%s: payload is not {\"topic\":..,\"lease\":..,\"level\":..}: %v", cmd, err))
	}
	if err := CheckTopicPattern(m.Topic); err != nil {
		return bad(err.Error())
	}
	level, err := checkLevel(m.Level)
	if err != nil {
		return bad(err.Error())
	}
	if m.Lease < 0 {
		return bad("lease must not be negative")
	}
	select {
	case <-ts.loaded:
	case <-ctx.Done():
		return nil, &Error{Code: envelope.CodeInternal, Message: "peer stopping"}
	}
	field := leaseField(twin, m.Topic)
	if cmd == CmdUnsubscribe {
		ts.mu.Lock()
		removed := ts.deleteLocked(twin, m.Topic)
		ts.mu.Unlock()
		if removed && p.rdb != nil {
			if err := p.rdb.HDel(ctx, LeaseHash, field).Err(); err != nil {
				p.log.Warn("cannot delete topic lease; it expires", "lease", field, "err", err)
			}
		}
		b, _ := json.Marshal(unsubscribeAns{Removed: removed})
		return b, nil
	}
	pol := p.policy.Load()
	if !pol.Allow(twin, cmd) || !pol.AllowSubscribe(twin, m.Topic) {
		p.metrics.dropped.WithLabelValues(dropTopicDenied).Inc()
		return nil, &Error{Code: envelope.CodeDenied, Message: fmt.Sprintf("twin %d may not subscribe to %q of twin %d", twin, m.Topic, p.Twin())}
	}
	lease := time.Duration(m.Lease) * time.Second
	if lease == 0 {
		lease = DefaultLease
	}
	lease = min(max(lease, ts.opts.MinLease), ts.opts.MaxLease)
	now := time.Now()
	l := &leaseRecord{Twin: twin, Topic: m.Topic, Level: level, Expires: now.Add(lease).UnixMilli()}
	size := leaseSize(l)
	ts.mu.Lock()
	old := ts.leases[twin][m.Topic]
	var reason, msg string
	switch {
	case old != nil:
		if ts.bytes-leaseSize(old)+size > ts.opts.MaxLeaseBytes {
			reason, msg = dropLeaseBytes, "this twin's topics hold as many lease bytes as they may"
		}
	case len(ts.leases[twin]) >= ts.opts.MaxLeasesPerTwin:
		reason, msg = dropLeaseTwin, fmt.Sprintf("twin %d holds %d leases, the most allowed", twin, ts.opts.MaxLeasesPerTwin)
	case ts.count >= ts.opts.MaxLeases:
		reason, msg = dropLeaseTotal, "this twin's topics have as many subscribers as they may"
	case ts.bytes+size > ts.opts.MaxLeaseBytes:
		reason, msg = dropLeaseBytes, "this twin's topics hold as many lease bytes as they may"
	}
	if reason == "" {
		ts.putLocked(l)
	}
	ts.mu.Unlock()
	if reason != "" {
		p.metrics.dropped.WithLabelValues(reason).Inc()
		return nil, &Error{Code: envelope.CodeRateLimited, Message: msg}
	}
	if p.rdb != nil {
		b, _ := json.Marshal(l)
		if err := p.rdb.HSet(ctx, LeaseHash, field, b).Err(); err != nil {
			ts.mu.Lock()
			if ts.leases[twin][m.Topic] == l {
				ts.deleteLocked(twin, m.Topic)
				if old != nil {
					ts.putLocked(old)
				}
			}
			ts.mu.Unlock()
			p.log.Warn("cannot store topic lease", "lease", field, "err", err)
			return nil, &Error{Code: envelope.CodeInternal, Message: "cannot store the lease; try again later"}
		}
	}
	b, _ := json.Marshal(subscribeAns{Topic: m.Topic, Lease: int64(lease / time.Second), Expires: now.Add(lease).Unix()})
	return b, nil
}

// PublishOptions tune Publish. Nil means defaults.
type PublishOptions struct {
	// Public sends the event in plain text to every subscriber; by
	// default it is encrypted for each one that has an e2e key.
	Public bool
	// Confirm asks each subscriber's peer to acknowledge the event; one
	// not acknowledged within TTL is dead-lettered (with Redis) and
	// reported to OnUndelivered. Subscriptions made with level confirmed
	// get confirmed events whatever this says.
	Confirm bool
	// TTL of the event envelopes; default 60s, at most 1800s.
	TTL time.Duration
	// Schema of the payload, sent as the envelope schema.
	Schema string
	// OnUndelivered, when set, is called (on a goroutine of its own) for
	// each confirmed subscriber that did not acknowledge the event.
	OnUndelivered func(twin uint32, e *Error)
}

// PublishResult says what Publish did.
type PublishResult = redisapi.PublishResult

// Publish sends data on topic, a topic of this twin, to every twin whose
// lease matches it and whom the policy lets subscribe to it: one signed
// envelope per subscriber twin. It returns once every envelope was handed
// to a relay (or failed). An error means nothing was sent: a bad topic
// name (wrapping ErrBadTopic) or a peer that is not running.
func (p *Peer) Publish(ctx context.Context, topic string, data []byte, opts *PublishOptions) (*PublishResult, error) {
	if err := CheckTopic(topic); err != nil {
		return nil, err
	}
	var o PublishOptions
	if opts != nil {
		o = *opts
	}
	if o.TTL < 0 {
		return nil, errors.New("peer: publish: negative TTL")
	}
	if o.TTL == 0 {
		o.TTL = 60 * time.Second
	}
	select {
	case <-p.ready:
	case <-p.done:
		return nil, errors.New("peer: not running")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-p.topics.loaded:
	case <-p.done:
		return nil, errors.New("peer: not running")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.runMu.Lock()
	runCtx := p.runCtx
	p.runMu.Unlock()
	// Targets: subscriber twin -> confirmed.
	ts := p.topics
	pol := p.policy.Load()
	now := time.Now().UnixMilli()
	targets := make(map[uint32]bool)
	ts.mu.Lock()
	for twin, m := range ts.leases {
		for pattern, l := range m {
			if l.Expires > now && MatchTopic(pattern, topic) {
				targets[twin] = targets[twin] || o.Confirm || l.Level == redisapi.LevelConfirmed
			}
		}
	}
	ts.mu.Unlock()
	for twin := range targets {
		if !pol.AllowSubscribe(twin, topic) {
			delete(targets, twin)
		}
	}
	uid := newUID()
	res := &PublishResult{UID: uid, Subscribers: len(targets)}
	if len(targets) == 0 {
		return res, nil
	}
	ttl := envelope.ClampTTL(uint64(o.TTL / time.Second))
	start := time.Now()
	deadline := time.Unix(start.Unix()+int64(ttl), 0)
	undelivered := func(twin uint32, e *Error) {
		p.metrics.errorCode(e.Code)
		if p.rdb != nil {
			msg, _ := json.Marshal(eventMsg{Topic: topic, Data: data, Confirm: true})
			p.deadLetter(runCtx, &DeadLetter{Queue: redisapi.QueueTopics, Message: string(msg),
				Reason: fmt.Sprintf("event on topic %q not confirmed by twin %d: %s", topic, twin, e.Message),
				Dst:    twin, Code: e.Code, UID: uid})
		}
		if o.OnUndelivered != nil {
			go o.OnUndelivered(twin, e)
		}
	}
	// Confirmed targets wait as one pending request; the sweeper times
	// them out and the resender sends them again like any request.
	var pd *pending
	for _, c := range targets {
		if c {
			pd = &pending{uid: uid, sent: start, deadline: deadline, waiting: make(map[uint32][]byte)}
			pd.deliver = func(_ context.Context, r *Response, _ *writeOp) {
				if r.Err != nil {
					undelivered(r.Source, r.Err)
				} else {
					ts.eventsAcked.Inc()
				}
			}
			pd.resendAt = pd.nextResend()
			break
		}
	}
	if pd != nil {
		for twin, c := range targets {
			if c {
				pd.waiting[twin] = nil
			}
		}
		p.pendMu.Lock()
		p.pending[uid] = pd
		p.pendMu.Unlock()
	}
	type result struct {
		twin uint32
		err  *Error
	}
	work := make(chan uint32)
	results := make(chan result, len(targets))
	var wg sync.WaitGroup
	for range min(len(targets), p.opts.Workers) {
		wg.Go(func() {
			for twin := range work {
				confirm := targets[twin]
				b, e := p.buildEvent(runCtx, uid, twin, topic, data, &o, confirm, start, ttl, deadline)
				if e == nil {
					if err := p.send(runCtx, b, deadline); err != nil {
						e = &Error{Code: envelope.CodeUndeliverable, Message: fmt.Sprintf("event to twin %d not delivered: %v", twin, err)}
					} else if confirm {
						p.pendMu.Lock()
						if _, ok := pd.waiting[twin]; ok {
							pd.waiting[twin] = b
						}
						p.pendMu.Unlock()
					}
				}
				results <- result{twin, e}
			}
		})
	}
	for twin := range targets {
		work <- twin
	}
	close(work)
	wg.Wait()
	close(results)
	for r := range results {
		if r.err == nil {
			res.Sent++
			ts.eventsSent.Inc()
			continue
		}
		res.Failed++
		if targets[r.twin] {
			// Answers it through deliver, exactly once.
			p.complete(runCtx, uid, r.twin, &Response{Source: r.twin, Timestamp: time.Now(), Err: r.err})
		} else {
			p.metrics.dropped.WithLabelValues(dropExpired).Inc()
			p.log.Warn("topic event not sent", "topic", topic, "twin", r.twin, "err", r.err.Message)
		}
	}
	return res, nil
}

// buildEvent makes the signed CmdEvent envelope of one publish for twin.
func (p *Peer) buildEvent(ctx context.Context, uid string, twin uint32, topic string, data []byte, o *PublishOptions,
	confirm bool, start time.Time, ttl uint64, deadline time.Time) ([]byte, *Error) {
	payload, _ := json.Marshal(eventMsg{Topic: topic, Data: data, Confirm: confirm})
	env := envelope.NewRequest(uid, CmdEvent, nil, ttl)
	env.Timestamp = uint64(start.Unix())
	if o.Schema != "" {
		env.Schema = &o.Schema
	}
	env.Source = envelope.NewAddress(p.Twin(), "")
	env.Destination = envelope.NewAddress(twin, "")
	if o.Public {
		env.Payload = &envelope.Envelope_Plain{Plain: payload}
	} else {
		t, e := p.lookupTwin(ctx, twin, deadline)
		if e != nil {
			return nil, e
		}
		if err := p.setPayload(env, t, payload); err != nil {
			return nil, &Error{Code: envelope.CodeInternal, Message: err.Error()}
		}
	}
	return p.seal(env, "event")
}

// Leases lists the live leases on this twin's topics, "<twin>/<pattern>"
// sorted, for tests and operators.
func (p *Peer) Leases() []string {
	ts := p.topics
	now := time.Now().UnixMilli()
	var out []string
	ts.mu.Lock()
	for twin, m := range ts.leases {
		for pattern, l := range m {
			if l.Expires > now {
				out = append(out, leaseField(twin, pattern))
			}
		}
	}
	ts.mu.Unlock()
	slices.Sort(out)
	return out
}
