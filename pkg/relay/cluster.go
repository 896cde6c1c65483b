package relay

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// A relay cluster is several Relay instances with the same Domains, the
// same NATS (Options.NATS) and the same shared Store (a RedisStore on one
// Redis). There is no directory of our own: NATS subject interest says
// where a session is.
//
// Each instance subscribes, for each (twin, sid) it holds, to the session
// subject <prefix>.s.<twin>.<hex sid> ("_" for the default session). What
// goes on it carries a header Rmb-Op:
//
//   - "d" (a request): deliver the envelope in the body to the session.
//     The holder answers "local" or "stored" once the envelope is in the
//     session's queue or the store, "gone" when the session left, or an
//     error kind. NATS "no responders" means nobody holds the session:
//     the sender answers fail-fast at once or stores the envelope.
//   - "w" (a publish): the store has something for the session; the
//     holder wakes its send loop. Every instance that stores an envelope
//     for a session it does not hold publishes one.
//   - "t" (a request): another instance takes the session over. The holder
//     closes its connection (4000, replaced), puts its unsent envelopes
//     back in the store, unsubscribes and only then answers.
//
// A connecting instance asks the holder to hand over ("t"), then
// subscribes, then drains the store: an envelope stored before the
// subscription is found by the drain, one stored after it brings a wake-up.
// Because interest spreads over the NATS routes asynchronously, the
// session drains the store once more clusterSettle after it subscribed (and
// every session does after a NATS reconnect): a wake-up published on a
// node the interest had not reached yet is not lost for longer than that.

const (
	// clusterWorkers handle the messages of the session subjects.
	clusterWorkers = 8
	// clusterInbox bounds the messages received and not handled yet;
	// beyond it NATS drops them (a slow consumer, counted): the sender's
	// request times out and it stores the envelope.
	clusterInbox = 4096
	// clusterRequestTimeout bounds a delivery request to another instance.
	clusterRequestTimeout = storeTimeout
	// clusterTakeoverTimeout bounds the wait for a holder to hand a
	// session over.
	clusterTakeoverTimeout = 10 * time.Second
)

// clusterSettle is when a new subscription drains the store again (a
// variable for the tests that prove the wake-up path alone).
var clusterSettle = 2 * time.Second

const (
	hdrOp       = "Rmb-Op"
	hdrDeadline = "Rmb-Deadline"
	opDeliver   = "d"
	opWake      = "w"
	opTakeover  = "t"
	opWhere     = "h" // request: the holder answers its instance name
)

// Replies to opDeliver besides an error kind.
const (
	replyLocal  = "local"
	replyStored = "stored"
	replyGone   = "gone"
)

// clusterResult counts what cluster requests met.
type clusterResult uint8

const (
	clusterDelivered  clusterResult = iota // another instance took the envelope
	clusterNobody                          // no responders: nobody holds the session
	clusterTimeout                         // no answer in time: stored here
	clusterTakeovers                       // sessions taken over from another instance
	clusterSlow                            // messages NATS dropped for a slow consumer
	clusterRedisError                      // calls to the cluster's Redis (limits, ownership) that failed
	numClusterResults
)

var clusterResultNames = [numClusterResults]string{"delivered", "no_responders", "timeout", "takeover", "slow_consumer", "redis_error"}

type cluster struct {
	r                    *Relay
	nc                   *nats.Conn
	prefix               string // "rmb.<hex of the first domain>.s."
	instance             string
	in                   chan *nats.Msg
	counts               [numClusterResults]atomic.Uint64
	redis                redis.UniversalClient // session leases and the shared rate limit
	rate                 *sharedLimiter        // nil without a rate limit
	leaseTTL, leaseEvery time.Duration         // leaseTTL and leaseRefresh at start

	redisWarned atomic.Int64 // unix ns of the latest Redis failure logged

	mu       sync.Mutex // guards the following
	subs     map[SessionKey]*nats.Subscription
	pending  map[string]*pendingClaim      // by owner token
	twinSubs map[uint32]*nats.Subscription // broadcast subjects of the twins with sessions here
	overview []InstanceStatus              // the instances that answered the latest survey
}

// InstanceStatus is one instance of a cluster as the status page shows
// it.
type InstanceStatus struct {
	Instance string `json:"instance"`
	Sessions int    `json:"sessions"`
	NATS     string `json:"nats"`
}

// clusterSurvey is the period at which each instance asks the others for
// their InstanceStatus.
const clusterSurvey = 5 * time.Second

// DefaultInstance is the instance name used when Options.Instance is
// empty: the host name.
func DefaultInstance() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "relay"
	}
	return h
}

func newCluster(r *Relay) (*cluster, error) {
	if _, mem := r.store.(*MemStore); mem {
		return nil, errors.New("relay: cluster mode (NATS) needs a store shared by all instances: set Store to a RedisStore on one Redis (rmb-relay --redis)")
	}
	c := &cluster{
		r:        r,
		prefix:   "rmb." + hex.EncodeToString([]byte(strings.ToLower(r.opts.Domains[0]))) + ".s.",
		instance: r.opts.Instance,
		in:       make(chan *nats.Msg, clusterInbox),
		subs:     make(map[SessionKey]*nats.Subscription),
		pending:  make(map[string]*pendingClaim),
		twinSubs: make(map[uint32]*nats.Subscription),
		redis:    clusterRedis(&r.opts),
		leaseTTL: leaseTTL, leaseEvery: leaseRefresh,
	}
	if c.redis == nil {
		return nil, errors.New("relay: cluster mode (NATS) needs the instances' shared Redis: set FederationRedis (rmb-relay --redis)")
	}
	for _, u := range r.opts.NATS {
		if strings.TrimSpace(u) == "" {
			return nil, errors.New("relay: empty NATS URL")
		}
	}
	nc, err := nats.Connect(strings.Join(r.opts.NATS, ","),
		nats.Name("rmb-relay "+c.instance),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.Timeout(5*time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			r.log.Warn("NATS disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			r.log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted())
			c.wakeAll()
			time.AfterFunc(clusterSettle, c.wakeAll)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				c.counts[clusterSlow].Add(1)
				return
			}
			r.log.Warn("NATS error", "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("relay: connect to NATS: %w", err)
	}
	c.nc = nc
	if _, err := nc.Subscribe(c.adminSubject(), c.handleAdmin); err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay: NATS subscribe: %w", err)
	}
	// "This instance is alive": its federation jobs are its own.
	if _, err := nc.Subscribe(c.ownerSubject(c.instance), func(m *nats.Msg) { m.Respond(nil) }); err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay: NATS subscribe: %w", err)
	}
	// Takeovers of this instance's connections, by owner token.
	if _, err := nc.Subscribe(c.takeoverSubject(c.instance), c.handleTakeover); err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay: NATS subscribe: %w", err)
	}
	if err := nc.FlushTimeout(clusterRequestTimeout); err != nil {
		nc.Close()
		return nil, fmt.Errorf("relay: NATS: %w", err)
	}
	for range clusterWorkers {
		go c.work()
	}
	go c.survey()
	go c.refreshLeases()
	return c, nil
}

// state is the NATS connection state: "connected", "reconnecting", ...
func (c *cluster) state() string { return strings.ToLower(c.nc.Status().String()) }

func (c *cluster) connected() bool { return c.nc.IsConnected() }

func (c *cluster) close() { c.nc.Close() }

// subject is the session subject of k.
func (c *cluster) subject(k SessionKey) string {
	sid := "_"
	if k.SID != "" {
		sid = hex.EncodeToString([]byte(k.SID))
	}
	return c.prefix + strconv.FormatUint(uint64(k.Twin), 10) + "." + sid
}

// parseSubject is the inverse of subject.
func (c *cluster) parseSubject(subj string) (SessionKey, bool) {
	rest, ok := strings.CutPrefix(subj, c.prefix)
	if !ok {
		return SessionKey{}, false
	}
	tw, sid, ok := strings.Cut(rest, ".")
	if !ok {
		return SessionKey{}, false
	}
	n, err := strconv.ParseUint(tw, 10, 32)
	if err != nil {
		return SessionKey{}, false
	}
	k := SessionKey{Twin: uint32(n)}
	if sid != "_" {
		b, err := hex.DecodeString(sid)
		if err != nil {
			return SessionKey{}, false
		}
		k.SID = string(b)
	}
	return k, true
}

// subscribe makes this instance a holder of k; r.mu is held (so that a
// subscribe and the unsubscribe of the same key keep their order). The
// caller flushes, outside the lock.
func (c *cluster) subscribe(k SessionKey) {
	sub, err := c.nc.ChanSubscribe(c.subject(k), c.in)
	if err != nil {
		c.r.log.Warn("NATS subscribe failed", "twin", k.Twin, "err", err)
		return
	}
	c.mu.Lock()
	c.subs[k] = sub
	c.mu.Unlock()
}

// unsubscribe ends holding k; r.mu is held.
func (c *cluster) unsubscribe(k SessionKey) {
	c.mu.Lock()
	sub := c.subs[k]
	delete(c.subs, k)
	c.mu.Unlock()
	if sub != nil {
		sub.Unsubscribe()
	}
}

// flush waits until the NATS server has seen our subscriptions.
func (c *cluster) flush() {
	if err := c.nc.FlushTimeout(clusterRequestTimeout); err != nil {
		c.r.log.Warn("NATS flush failed", "err", err)
	}
}

// takeover asks the instance holding k, if any, to hand it over, and
// returns once it did (or clusterTakeoverTimeout passed).
func (c *cluster) takeover(k SessionKey) {
	msg := nats.NewMsg(c.subject(k))
	msg.Header.Set(hdrOp, opTakeover)
	_, err := c.nc.RequestMsg(msg, clusterTakeoverTimeout)
	switch {
	case err == nil:
		c.counts[clusterTakeovers].Add(1)
	case errors.Is(err, nats.ErrNoResponders):
	default:
		c.r.log.Warn("session takeover not confirmed", "twin", k.Twin, "err", err)
	}
}

// deliver offers m to the instance holding k. ok is false when nobody
// holds it. A holder that does not answer in time may have taken m or
// not: m is stored (the session may see it twice; see docs/internals.md).
func (c *cluster) deliver(k SessionKey, m Message) (res routeResult, ok bool, err error) {
	msg := nats.NewMsg(c.subject(k))
	msg.Header.Set(hdrOp, opDeliver)
	msg.Header.Set(hdrDeadline, strconv.FormatInt(m.Deadline.UnixNano(), 10))
	msg.Data = m.Data
	reply, err := c.nc.RequestMsg(msg, clusterRequestTimeout)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		c.counts[clusterNobody].Add(1)
		return 0, false, nil
	case err != nil:
		c.counts[clusterTimeout].Add(1)
		c.r.log.Warn("cluster delivery not confirmed, storing", "twin", k.Twin, "err", err)
		res, err := c.r.storeFor(k, m)
		return res, true, err
	}
	switch string(reply.Data) {
	case replyLocal, replyStored:
		c.counts[clusterDelivered].Add(1)
		return routedCluster, true, nil
	case replyGone:
		c.counts[clusterNobody].Add(1)
		return 0, false, nil
	}
	return 0, true, replyError(string(reply.Data))
}

// holder returns the name of the instance holding k, as NATS routes it
// from here, or "" when nobody does.
func (c *cluster) holder(k SessionKey) (string, error) {
	msg := nats.NewMsg(c.subject(k))
	msg.Header.Set(hdrOp, opWhere)
	reply, err := c.nc.RequestMsg(msg, clusterRequestTimeout)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return "", nil
	case err != nil:
		return "", err
	}
	return string(reply.Data), nil
}

// wake tells the holder of k, if any, that the store has something for it.
func (c *cluster) wake(k SessionKey) {
	msg := nats.NewMsg(c.subject(k))
	msg.Header.Set(hdrOp, opWake)
	if err := c.nc.PublishMsg(msg); err != nil {
		c.r.log.Debug("NATS wake-up not published", "err", err)
	}
}

// wakeAll makes every local session look at the store.
func (c *cluster) wakeAll() {
	for _, s := range c.r.liveSessions(nil) {
		s.wake()
	}
}

func (c *cluster) work() {
	for {
		select {
		case <-c.r.ctx.Done():
			return
		case m := <-c.in:
			c.handle(m)
		}
	}
}

func (c *cluster) handle(msg *nats.Msg) {
	k, ok := c.parseSubject(msg.Subject)
	if !ok {
		if twin, ok := c.parseBroadcast(msg.Subject); ok {
			c.handleBroadcast(twin, msg)
		}
		return
	}
	switch msg.Header.Get(hdrOp) {
	case opWake:
		if s := c.r.lookup(k); s != nil {
			s.wake()
		}
	case opTakeover:
		go c.handOver(k, msg)
	case opWhere:
		if c.r.lookup(k) != nil {
			msg.Respond([]byte(c.instance))
		}
	case opDeliver:
		s := c.r.lookup(k)
		if s == nil {
			msg.Respond([]byte(replyGone))
			return
		}
		ns, err := strconv.ParseInt(msg.Header.Get(hdrDeadline), 10, 64)
		if err != nil {
			msg.Respond([]byte("malformed"))
			return
		}
		res, err := s.deliver(Message{Data: msg.Data, Deadline: time.Unix(0, ns)})
		switch {
		case err != nil:
			msg.Respond([]byte(errorKind(err)))
		case res == routedLocal:
			msg.Respond([]byte(replyLocal))
		default:
			msg.Respond([]byte(replyStored))
		}
	}
}

// handOver closes the local session of k for a takeover and answers once
// it is gone: its unsent envelopes are back in the store and the
// subscription is ended.
func (c *cluster) handOver(k SessionKey, msg *nats.Msg) {
	if s := c.r.lookup(k); s != nil {
		c.r.counters.replaced.Add(1)
		s.log.Info("session replaced by a connection to another instance")
		s.close(statusReplaced, "replaced by a new connection")
		t := time.NewTimer(clusterTakeoverTimeout)
		defer t.Stop()
		select {
		case <-s.done:
		case <-t.C:
			s.kill()
		}
	}
	// The NATS server must have seen the unsubscribe before the new
	// holder subscribes.
	c.flush()
	msg.Respond(nil)
}

func errorKind(err error) string {
	switch {
	case errors.Is(err, ErrStoreFull):
		return "store_full"
	case errors.Is(err, ErrTwinQueueFull):
		return "twin_queue_full"
	case errors.Is(err, ErrQueueFull):
		return "queue_full"
	}
	return "store_error"
}

func replyError(kind string) error {
	switch kind {
	case "store_full":
		return ErrStoreFull
	case "twin_queue_full":
		return ErrTwinQueueFull
	case "queue_full":
		return ErrQueueFull
	}
	return fmt.Errorf("relay: another instance failed to deliver: %s", kind)
}

// fedStoreName names the durable federation queue: the first domain, and
// in a cluster the instance too, so that instances sharing one Redis do
// not post each other's jobs (a job is posted by the instance that
// accepted it, or by the instance of the same name that restarts).
func (r *Relay) fedStoreName() string {
	if r.cl == nil {
		return r.opts.Domains[0]
	}
	return r.opts.Domains[0] + "/" + r.opts.Instance
}

// register adds the cluster's metrics: the instance, the NATS connection
// and what the cluster requests met.
func (c *cluster) register(reg *prometheus.Registry) {
	labels := prometheus.Labels{"instance": c.instance}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "rmb", Subsystem: "relay", Name: "cluster_nats_connected", ConstLabels: labels,
		Help: "1 while this relay instance is connected to NATS, 0 otherwise.",
	}, func() float64 {
		if c.connected() {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "rmb", Subsystem: "relay", Name: "cluster_instances", ConstLabels: labels,
		Help: "Instances of the cluster that answered the latest survey (every 5 s), this one included.",
	}, func() float64 { return float64(len(c.instances())) }))
	for i := range numClusterResults {
		v := &c.counts[i]
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "rmb", Subsystem: "relay", Name: "cluster_events_total",
			Help:        "Cluster events of this instance, by result: delivered (to another instance), no_responders, timeout (stored here), takeover, slow_consumer (dropped by NATS), redis_error (a limit or ownership call to Redis failed: this instance decided alone).",
			ConstLabels: prometheus.Labels{"instance": c.instance, "result": clusterResultNames[i]},
		}, func() float64 { return float64(v.Load()) }))
	}
}

// The admin API of a cluster asks every instance on the admin subject and
// gathers the answers for clusterGather (at most clusterMaxInstances).
const (
	clusterGather       = time.Second
	clusterMaxInstances = 256
	hdrTwin             = "Rmb-Twin"
	opList              = "list"
	opDisconnect        = "disconnect"
	opStatus            = "status"
)

func (c *cluster) adminSubject() string { return strings.TrimSuffix(c.prefix, "s.") + "admin" }

// handleAdmin answers the admin requests of any instance: the local
// sessions (at most maxStatusSessions), or how many sessions of a twin it
// closed.
func (c *cluster) handleAdmin(msg *nats.Msg) {
	var v any
	switch msg.Header.Get(hdrOp) {
	case opList:
		list := c.r.Sessions()
		if len(list) > maxStatusSessions {
			list = list[:maxStatusSessions]
		}
		v = list
	case opStatus:
		v = InstanceStatus{Instance: c.instance, Sessions: c.r.sessionCount(), NATS: c.state()}
	case opDisconnect:
		twin, err := strconv.ParseUint(msg.Header.Get(hdrTwin), 10, 32)
		if err != nil {
			return
		}
		v = map[string]int{"closed": c.r.Disconnect(uint32(twin))}
	default:
		return
	}
	b, err := json.Marshal(v)
	if err == nil {
		msg.Respond(b)
	}
}

// gather sends an admin request to every instance and returns the answers
// that came within clusterGather.
func (c *cluster) gather(op string, twin uint32) [][]byte {
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, clusterMaxInstances)
	sub, err := c.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		c.r.log.Warn("NATS subscribe failed", "err", err)
		return nil
	}
	defer sub.Unsubscribe()
	msg := nats.NewMsg(c.adminSubject())
	msg.Reply = inbox
	msg.Header.Set(hdrOp, op)
	msg.Header.Set(hdrTwin, strconv.FormatUint(uint64(twin), 10))
	if err := c.nc.PublishMsg(msg); err != nil {
		c.r.log.Warn("NATS publish failed", "err", err)
		return nil
	}
	t := time.NewTimer(clusterGather)
	defer t.Stop()
	var out [][]byte
	for len(out) < clusterMaxInstances {
		select {
		case m := <-ch:
			out = append(out, m.Data)
		case <-t.C:
			return out
		case <-c.r.ctx.Done():
			return out
		}
	}
	return out
}

// sessions lists the sessions of every instance.
func (c *cluster) sessions() []SessionInfo {
	var out []SessionInfo
	for _, b := range c.gather(opList, 0) {
		var list []SessionInfo
		if json.Unmarshal(b, &list) == nil {
			out = append(out, list...)
		}
	}
	return out
}

// disconnect closes twin's sessions on every instance and returns how
// many there were.
func (c *cluster) disconnect(twin uint32) int {
	n := 0
	for _, b := range c.gather(opDisconnect, twin) {
		var v struct {
			Closed int `json:"closed"`
		}
		if json.Unmarshal(b, &v) == nil {
			n += v.Closed
		}
	}
	return n
}

// survey asks every instance for its status every clusterSurvey, until
// the relay shuts down, for the status page and the instances gauge.
func (c *cluster) survey() {
	t := time.NewTicker(clusterSurvey)
	defer t.Stop()
	for {
		var list []InstanceStatus
		for _, b := range c.gather(opStatus, 0) {
			var st InstanceStatus
			if json.Unmarshal(b, &st) == nil {
				list = append(list, st)
			}
		}
		slices.SortFunc(list, func(a, b InstanceStatus) int { return strings.Compare(a.Instance, b.Instance) })
		c.mu.Lock()
		c.overview = list
		c.mu.Unlock()
		select {
		case <-c.r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// instances returns the latest survey.
func (c *cluster) instances() []InstanceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.overview
}

// clusterAdoptPeriod is how often an instance looks for the federation
// jobs of instances that are gone.
const clusterAdoptPeriod = time.Minute

func (c *cluster) ownerSubject(instance string) string {
	return strings.TrimSuffix(c.prefix, "s.") + "i." + hex.EncodeToString([]byte(instance))
}

// gone reports whether no instance of that name is connected to NATS.
func (c *cluster) gone(instance string) bool {
	_, err := c.nc.Request(c.ownerSubject(instance), nil, clusterRequestTimeout)
	return errors.Is(err, nats.ErrNoResponders)
}

// adoptLoop adopts the federation jobs of gone instances at start and
// every clusterAdoptPeriod, until Shutdown.
func (r *Relay) adoptLoop() {
	t := time.NewTicker(clusterAdoptPeriod)
	defer t.Stop()
	for {
		r.adoptOrphans()
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// adoptOrphans moves the durable federation jobs of every instance of
// this cluster that is not connected to NATS into this instance's queue,
// and posts them. An instance that dies thus does not take the envelopes
// it accepted with it. (Should it come back between the check and the
// move, a job may be posted twice: the receiver's replay guard and the
// peer suppress the copy.)
func (r *Relay) adoptOrphans() {
	f := r.fed
	if r.cl == nil || f.durable == nil {
		return
	}
	prefix := "rmb:relay:fed:{" + strings.ToLower(r.opts.Domains[0]) + "/"
	ctx, cancel := context.WithTimeout(r.ctx, 10*fedStoreTimeout)
	defer cancel()
	iter := r.opts.FederationRedis.Scan(ctx, 0, globEscape(prefix)+"*}:jobs", 100).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		inst := strings.TrimSuffix(strings.TrimPrefix(key, prefix), "}:jobs")
		if inst == r.opts.Instance || !r.cl.gone(inst) {
			continue
		}
		from := newFedStore(r.opts.FederationRedis, r.opts.Domains[0]+"/"+inst)
		jobs, err := f.durable.adopt(ctx, from, r.opts.MaxEnvelopeSize)
		if err != nil {
			r.log.Warn("federation jobs of a gone instance not adopted", "from", inst, "err", err)
			continue
		}
		n := 0
		for _, j := range jobs {
			if f.queueStored(j) {
				n++
			}
		}
		if len(jobs) > 0 {
			r.log.Info("federation jobs of a gone instance adopted", "from", inst, "jobs", n)
		}
	}
	if err := iter.Err(); err != nil && r.ctx.Err() == nil {
		r.log.Warn("looking for federation jobs of gone instances failed", "err", err)
	}
}

// globEscape escapes the Redis glob characters of s.
func globEscape(s string) string {
	var b strings.Builder
	for _, ch := range s {
		if strings.ContainsRune(`*?[]\`, ch) {
			b.WriteByte('\\')
		}
		b.WriteRune(ch)
	}
	return b.String()
}
