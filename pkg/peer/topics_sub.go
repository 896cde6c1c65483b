package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// The subscriber's side of topics.
//
// A local subscription is (owner, pattern, queue): events of owner's
// topics matching pattern go to the Redis list queue, or to a Go channel
// for subscriptions made in-process (Subscribe without a Queue). The
// peer holds one lease per (owner, pattern) at the owner's peer, whatever
// the number of local subscriptions sharing it, and renews it at half its
// term while one exists. Redis subscriptions are kept in SubscriptionHash
// (field subKey, value localSub JSON) and taken up again, lease renewed,
// when the peer starts. An event is accepted only from an owner this peer
// holds a subscription to, for a topic one of them matches.

// SubscriptionHash holds this peer's Redis subscriptions.
const SubscriptionHash = "msgbus.system.topics.subscriptions"

// MaxQueueNameLen bounds the name of a subscription's queue.
const MaxQueueNameLen = 256

// localSub is one local subscription.
type localSub struct {
	Owner uint32 `json:"owner"`
	Topic string `json:"topic"`
	Queue string `json:"queue,omitempty"`
	Level string `json:"level"`
	Lease int64  `json:"lease"` // seconds asked

	goID string     // in-process subscriptions: a unique id instead of a queue
	ch   chan Event // in-process subscriptions
}

// key is the subscription's SubscriptionHash field: owner, pattern and
// queue, space-separated (patterns hold no space; the queue comes last).
func (s *localSub) key() string {
	q := s.Queue
	if s.goID != "" {
		q = "go:" + s.goID
	}
	return strconv.FormatUint(uint64(s.Owner), 10) + " " + s.Topic + " " + q
}

type remoteKey struct {
	owner uint32
	topic string
}

// remoteSub is a lease this peer holds at an owner's peer.
type remoteSub struct {
	level    string
	lease    int64     // seconds asked
	expires  time.Time // as granted; zero until granted
	renewAt  time.Time
	renewing bool
	failures int
}

// SubscribeOptions tune Subscribe. Nil means defaults.
type SubscribeOptions struct {
	// Level is redisapi.LevelAtMostOnce (default) or LevelConfirmed: the
	// owner then sends every event confirmed, and this peer acknowledges
	// each once it is on Queue or in the channel.
	Level string
	// Lease asked of the owner; it grants between its MinLease and
	// MaxLease. Default 300s. The peer renews it at half its term.
	Lease time.Duration
	// Queue, when set, is the Redis list events are pushed on (as
	// redisapi.TopicEvent JSON); the subscription is then kept in Redis
	// and outlives this process. Without it events come on the
	// Subscription's channel, for as long as this process runs.
	Queue string
}

// Event is a topic event as a Go subscription sees it.
type Event struct {
	UID       string
	Owner     uint32
	Topic     string
	Pattern   string // the subscription's
	Data      []byte
	Schema    string
	Public    bool // it came in plain text
	Confirm   bool
	Timestamp time.Time
}

// Subscription is a local subscription made with Subscribe.
type Subscription struct {
	p      *Peer
	sub    *localSub
	Result redisapi.SubscribeResult // the owner's answer
}

// Events delivers the events of an in-process subscription (nil for one
// with a Queue). An event that finds it full is dropped and counted
// (rmb_peer_dropped_total{reason="topic_buffer_full"}).
func (s *Subscription) Events() <-chan Event { return s.sub.ch }

// Close ends the subscription (Unsubscribe).
func (s *Subscription) Close(ctx context.Context) error {
	_, err := s.p.unsubscribe(ctx, s.sub)
	return err
}

// ErrSubscription means a subscription was refused locally (bounds, bad
// queue name); errors from the owner are *Error.
var ErrSubscription = errors.New("subscription refused")

// Subscribe subscribes to owner's topics matching pattern (MQTT + and #).
// It asks the owner's peer for a lease and returns its answer: an *Error
// when the owner refused (401 policy, 429 bounds, 400 bad pattern, 408
// no answer); ErrBadTopic or ErrSubscription when refused here.
// Subscribing again with the same owner, pattern and Queue renews and
// returns the existing subscription.
func (p *Peer) Subscribe(ctx context.Context, owner uint32, pattern string, opts *SubscribeOptions) (*Subscription, error) {
	var o SubscribeOptions
	if opts != nil {
		o = *opts
	}
	if owner == 0 {
		return nil, fmt.Errorf("%w: no owner twin", ErrSubscription)
	}
	if err := CheckTopicPattern(pattern); err != nil {
		return nil, err
	}
	level, err := checkLevel(o.Level)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSubscription, err)
	}
	if o.Lease < 0 {
		return nil, fmt.Errorf("%w: negative lease", ErrSubscription)
	}
	if o.Queue != "" {
		if err := checkEventQueue(o.Queue); err != nil {
			return nil, err
		}
		if p.rdb == nil {
			return nil, fmt.Errorf("%w: a queue needs the peer's Redis", ErrSubscription)
		}
	}
	lease := int64(o.Lease / time.Second)
	if lease == 0 {
		lease = int64(DefaultLease / time.Second)
	}
	ls := &localSub{Owner: owner, Topic: pattern, Queue: o.Queue, Level: level, Lease: lease}
	ts := p.topics
	ts.subMu.Lock()
	if o.Queue == "" {
		ts.nextGo++
		ls.goID = strconv.FormatUint(ts.nextGo, 10)
		ls.ch = make(chan Event, ts.opts.EventBuffer)
	}
	if old := ts.subs[ls.key()]; old != nil {
		ls = old
	} else if len(ts.subs) >= ts.opts.MaxSubscriptions {
		ts.subMu.Unlock()
		return nil, fmt.Errorf("%w: this peer holds %d subscriptions, the most allowed", ErrSubscription, ts.opts.MaxSubscriptions)
	}
	rk := remoteKey{owner, pattern}
	askLevel, askLease := level, lease
	if r := ts.remotes[rk]; r != nil {
		if r.level == redisapi.LevelConfirmed {
			askLevel = r.level
		}
		askLease = max(askLease, r.lease)
	}
	ts.subMu.Unlock()

	ans, err := p.askOwner(ctx, owner, CmdSubscribe, subscribeMsg{Topic: pattern, Lease: askLease, Level: askLevel})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if ls.Queue != "" {
		b, _ := json.Marshal(ls)
		if err := p.rdb.HSet(ctx, SubscriptionHash, ls.key(), b).Err(); err != nil {
			return nil, fmt.Errorf("peer: store subscription: %w", err)
		}
	}
	ts.subMu.Lock()
	ts.subs[ls.key()] = ls
	r := ts.remotes[rk]
	if r == nil {
		r = &remoteSub{}
		ts.remotes[rk] = r
	}
	r.level, r.lease = askLevel, askLease
	r.expires = now.Add(time.Duration(ans.Lease) * time.Second)
	r.renewAt = now.Add(time.Duration(ans.Lease) * time.Second / 2)
	r.failures = 0
	ts.subMu.Unlock()
	return &Subscription{p: p, sub: ls, Result: redisapi.SubscribeResult{Twin: owner, Topic: pattern, Lease: ans.Lease, Expires: ans.Expires}}, nil
}

func checkEventQueue(q string) error {
	switch {
	case len(q) > MaxQueueNameLen:
		return fmt.Errorf("%w: queue name of %d bytes, at most %d", ErrSubscription, len(q), MaxQueueNameLen)
	case strings.HasPrefix(q, "msgbus.system."):
		return fmt.Errorf("%w: queue %s is one of the peer's own lists (msgbus.system.*)", ErrSubscription, quoteShort(q))
	case strings.ContainsAny(q, " \t\r\n"):
		return fmt.Errorf("%w: queue name holds white space", ErrSubscription)
	}
	return nil
}

// askOwner sends a built-in topic command to owner and decodes its answer.
func (p *Peer) askOwner(ctx context.Context, owner uint32, cmd string, m subscribeMsg) (*subscribeAns, error) {
	b, _ := json.Marshal(m)
	rs, err := p.Call(ctx, []uint32{owner}, cmd, b, &CallOptions{TTL: 30 * time.Second, Schema: "application/json"})
	if err != nil {
		return nil, err
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("peer: %s: no answer from twin %d", cmd, owner)
	}
	if rs[0].Err != nil {
		return nil, rs[0].Err
	}
	var ans subscribeAns
	if cmd != CmdUnsubscribe {
		if err := json.Unmarshal(rs[0].Data, &ans); err != nil || ans.Lease <= 0 {
			return nil, fmt.Errorf("peer: %s: bad answer from twin %d: %q", cmd, owner, rs[0].Data)
		}
	}
	return &ans, nil
}

// Unsubscribe ends the Redis subscription (owner, pattern, queue). It
// reports whether there was one. The owner is told when no other local
// subscription shares the lease (if it cannot be told, the lease
// expires).
func (p *Peer) Unsubscribe(ctx context.Context, owner uint32, pattern, queue string) (bool, error) {
	if err := CheckTopicPattern(pattern); err != nil {
		return false, err
	}
	return p.unsubscribe(ctx, &localSub{Owner: owner, Topic: pattern, Queue: queue})
}

func (p *Peer) unsubscribe(ctx context.Context, ls *localSub) (bool, error) {
	ts := p.topics
	key := ls.key()
	ts.subMu.Lock()
	old := ts.subs[key]
	delete(ts.subs, key)
	rk := remoteKey{ls.Owner, ls.Topic}
	last := true
	for _, s := range ts.subs {
		if s.Owner == ls.Owner && s.Topic == ls.Topic {
			last = false
			break
		}
	}
	if last {
		delete(ts.remotes, rk)
	}
	ts.subMu.Unlock()
	if old == nil {
		return false, nil
	}
	if old.Queue != "" && p.rdb != nil {
		if err := p.rdb.HDel(ctx, SubscriptionHash, key).Err(); err != nil {
			return true, fmt.Errorf("peer: delete subscription: %w", err)
		}
	}
	if last {
		if _, err := p.askOwner(ctx, ls.Owner, CmdUnsubscribe, subscribeMsg{Topic: ls.Topic}); err != nil {
			p.log.Info("owner not told of unsubscribe; its lease expires", "owner", ls.Owner, "topic", ls.Topic, "err", err)
		}
	}
	return true, nil
}

// Subscriptions lists this peer's local subscriptions ("<owner> <pattern>
// <queue>"), for tests and operators.
func (p *Peer) Subscriptions() []string {
	ts := p.topics
	ts.subMu.Lock()
	defer ts.subMu.Unlock()
	out := make([]string, 0, len(ts.subs))
	for k := range ts.subs {
		out = append(out, k)
	}
	return out
}

// restoreSubscriptions reads SubscriptionHash; their leases are renewed
// at once.
func (p *Peer) restoreSubscriptions(ctx context.Context) {
	if p.rdb == nil {
		return
	}
	all, err := p.rdb.HGetAll(ctx, SubscriptionHash).Result()
	if err != nil {
		p.log.Warn("cannot load topic subscriptions; not renewed until this peer restarts", "err", err)
		return
	}
	ts := p.topics
	now := time.Now()
	var bad []string
	ts.subMu.Lock()
	for f, v := range all {
		var ls localSub
		if json.Unmarshal([]byte(v), &ls) != nil || ls.key() != f || ls.Owner == 0 ||
			CheckTopicPattern(ls.Topic) != nil || checkEventQueue(ls.Queue) != nil || ls.Queue == "" {
			bad = append(bad, f)
			continue
		}
		if lv, err := checkLevel(ls.Level); err != nil {
			bad = append(bad, f)
			continue
		} else {
			ls.Level = lv
		}
		ts.subs[f] = &ls
		rk := remoteKey{ls.Owner, ls.Topic}
		r := ts.remotes[rk]
		if r == nil {
			r = &remoteSub{level: ls.Level, lease: ls.Lease, renewAt: now}
			ts.remotes[rk] = r
		}
		if ls.Level == redisapi.LevelConfirmed {
			r.level = ls.Level
		}
		r.lease = max(r.lease, ls.Lease)
	}
	n := len(ts.subs)
	ts.subMu.Unlock()
	if len(bad) > 0 {
		p.log.Warn("malformed topic subscriptions deleted", "fields", bad)
		p.rdb.HDel(ctx, SubscriptionHash, bad...)
	}
	if n > 0 {
		p.log.Info("loaded topic subscriptions from an earlier run", "subscriptions", n)
	}
}

// renewDue renews, each on a goroutine of its own, the leases whose time
// has come.
func (p *Peer) renewDue(ctx context.Context, now time.Time) {
	ts := p.topics
	ts.subMu.Lock()
	for rk, r := range ts.remotes {
		if r.renewing || now.Before(r.renewAt) {
			continue
		}
		r.renewing = true
		m := subscribeMsg{Topic: rk.topic, Lease: r.lease, Level: r.level}
		go func() {
			ans, err := p.askOwner(ctx, rk.owner, CmdRenew, m)
			ts.subMu.Lock()
			defer ts.subMu.Unlock()
			r.renewing = false
			if ts.remotes[rk] != r {
				return // unsubscribed meanwhile
			}
			now := time.Now()
			if err != nil {
				r.failures++
				// Try again soon, well before the lease ends when it can.
				wait := min(time.Duration(r.failures)*time.Second, 15*time.Second)
				r.renewAt = now.Add(wait)
				p.log.Warn("topic lease not renewed; retrying", "owner", rk.owner, "topic", rk.topic, "err", err, "retry_in", wait)
				return
			}
			r.failures = 0
			r.expires = now.Add(time.Duration(ans.Lease) * time.Second)
			r.renewAt = now.Add(time.Duration(ans.Lease) * time.Second / 2)
		}()
	}
	ts.subMu.Unlock()
}

// handleEvent delivers an incoming event to the local subscriptions it
// matches, and acknowledges it when the publisher asked for that.
func (p *Peer) handleEvent(ctx context.Context, env *envelope.Envelope, src address, payload []byte) {
	deadline := env.Deadline()
	var m eventMsg
	if err := json.Unmarshal(payload, &m); err != nil {
		p.metrics.dropped.WithLabelValues(dropTopicBad).Inc()
		p.log.Debug("malformed topic event dropped", "uid", env.Uid, "src", src, "err", err)
		return
	}
	refuse := func(reason string, code uint32, msg string) {
		p.metrics.dropped.WithLabelValues(reason).Inc()
		if m.Confirm {
			p.sendError(ctx, env.Uid, src, code, msg, deadline)
		}
	}
	if err := CheckTopic(m.Topic); err != nil {
		refuse(dropTopicBad, envelope.CodeBadPayload, err.Error())
		return
	}
	// One delivery per queue (or channel), whatever the number of
	// patterns of it the topic matches.
	ts := p.topics
	var targets []*localSub
	seen := make(map[string]bool)
	ts.subMu.Lock()
	for _, s := range ts.subs {
		if s.Owner != src.twin || !MatchTopic(s.Topic, m.Topic) {
			continue
		}
		q := s.Queue
		if s.goID != "" {
			q = "go:" + s.goID
		}
		if !seen[q] {
			seen[q] = true
			targets = append(targets, s)
		}
	}
	ts.subMu.Unlock()
	if len(targets) == 0 {
		refuse(dropTopicUnsubscribed, envelope.CodeNotFound, fmt.Sprintf("twin %d holds no subscription to %q of twin %d", p.Twin(), m.Topic, src.twin))
		return
	}
	_, public := env.Payload.(*envelope.Envelope_Plain)
	ev := Event{UID: env.Uid, Owner: src.twin, Topic: m.Topic, Data: m.Data, Schema: env.GetSchema(),
		Public: public, Confirm: m.Confirm, Timestamp: time.Unix(int64(env.Timestamp), 0)}
	left := atomic.Int32{}
	left.Store(int32(len(targets)))
	var failed atomic.Bool
	done := func(ok bool) {
		if !ok {
			failed.Store(true)
		}
		if left.Add(-1) != 0 || !m.Confirm {
			return
		}
		if failed.Load() {
			p.sendError(ctx, env.Uid, src, envelope.CodeRateLimited, "a subscription's queue is full", deadline)
		} else {
			p.sendAnswer(ctx, env.Uid, src, nil, "", nil, deadline)
		}
	}
	for _, s := range targets {
		e := ev
		e.Pattern = s.Topic
		if s.ch != nil {
			select {
			case s.ch <- e:
				ts.eventsReceived.Inc()
				done(true)
			default:
				p.metrics.dropped.WithLabelValues(dropTopicBufferFull).Inc()
				done(false)
			}
			continue
		}
		msg := redisapi.TopicEvent{Version: 1, UID: e.UID, Owner: e.Owner, Topic: e.Topic, Pattern: e.Pattern,
			Data: redisapi.EncodeData(e.Data), Schema: e.Schema, Public: e.Public, Confirm: e.Confirm, Now: e.Timestamp.Unix()}
		b, _ := json.Marshal(msg)
		until := deadline
		if soon := time.Now().Add(5 * time.Second); until.Before(soon) {
			until = soon
		}
		p.pushAsyncLanded(ctx, s.Queue, b, until, nil, func(err error) {
			p.metrics.dropped.WithLabelValues(dropTopicQueueFull).Inc()
			p.log.Warn("topic event not pushed", "queue", s.Queue, "topic", e.Topic, "err", err)
			done(false)
		}, func() {
			ts.eventsReceived.Inc()
			done(true)
		})
	}
}

// topicsRun loads leases and subscriptions, then expires leases and renews
// this peer's until ctx ends. With Redis it also serves QueueTopics.
func (p *Peer) topicsRun(ctx context.Context) {
	if err := p.loadLeases(ctx); err != nil {
		return
	}
	p.restoreSubscriptions(ctx)
	if p.rdb != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.popLoop(ctx, redisapi.QueueTopics, TopicsProcessing, p.handleTopicMsg)
		}()
		defer func() { <-done }()
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.sweepTopicLeases(ctx, now)
			p.renewDue(ctx, now)
		}
	}
}
