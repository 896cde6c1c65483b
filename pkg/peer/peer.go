package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/e2e"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// Version is what the built-in rmb.version command answers by default.
const Version = "rmb-go-peer/0.1.0"

// MaxRelays is how many relays a peer connects to.
const MaxRelays = 4

// Registrar is what the peer needs from the twin directory.
// *registrar.Client satisfies it.
type Registrar interface {
	// Twin looks a twin up by id; an unknown twin is an error wrapping
	// registrar.ErrNotFound.
	Twin(ctx context.Context, id uint32) (*registrar.Twin, error)
	// TwinByPublicKey looks a twin up by its signing key.
	TwinByPublicKey(ctx context.Context, pub []byte) (*registrar.Twin, error)
	// Register creates the twin of id with the given relay domains and the
	// identity's e2e key.
	Register(ctx context.Context, id *identity.Identity, relays []string) (*registrar.Twin, error)
	// Update replaces the relays and e2e key of twin.
	Update(ctx context.Context, id *identity.Identity, twin uint32, relays []string, e2eKey []byte) (*registrar.Twin, error)
}

// Options configure a Peer. Fields marked required must be set; the others
// have the defaults given.
type Options struct {
	// Identity signs, verifies and decrypts. Required.
	Identity *identity.Identity
	// Relays are the WebSocket URLs (ws://host:port, wss://host/...) of 1 to
	// MaxRelays relays. Their host[:port] parts are registered as the twin's
	// relay domains. Required.
	Relays []string
	// Registrar looks twins up and registers this one. When it also has a
	// Watch(ctx) error method (as *registrar.Client does), Run keeps it
	// running to refresh its cache; do not run another Watch on it.
	// Required.
	Registrar Registrar
	// Redis enables the local JSON API of docs/protocol.md §9. Nil means the peer
	// is used in-process only, through Call and Handle. The peer keeps
	// four of the client's connections for its own loops (Client.Conn),
	// so its PoolSize must be at least 5 (go-redis's default is 10 per
	// CPU).
	// It needs nothing of RESP3: with Protocol 2, as rmb-peer sets it,
	// go-redis does not peek at those connections for push notifications
	// before each round trip.
	Redis *redis.Client
	// Logger receives the peer's logs. Default slog.Default().
	Logger *slog.Logger
	// NoUpdate keeps the registrar record as it is even when its relays or
	// e2e key differ from this peer's.
	NoUpdate bool
	// Policy decides which twins may call which commands. Nil allows all.
	Policy *Policy
	// Version is the answer of rmb.version. Default Version.
	Version string
	// QueueLimit bounds every Redis list the peer pushes to. A push that
	// would exceed it is refused with an error answer or dead-lettered,
	// never trimmed. Default 10000.
	QueueLimit int64
	// Workers bounds how many local requests are sent concurrently and how
	// many goroutines process incoming envelopes. Default 64.
	Workers int
	// PingInterval is how often each relay connection is pinged; a ping
	// not answered within PingTimeout closes the connection. Defaults 20s
	// and 10s.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential delay
	// between reconnection attempts. Defaults 250ms and 15s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// WriteTimeout bounds one write to a relay. Default 10s.
	WriteTimeout time.Duration
	// Transport carries the opening handshake with a relay: its proxy and
	// TLS settings apply (a private CA for wss://, say). Default
	// http.DefaultTransport: proxies from the environment, system roots.
	Transport *http.Transport
	// SweepInterval is how often expired requests are answered with a
	// timeout error. Default 250ms.
	SweepInterval time.Duration

	// Bounds on what remote twins leave in Redis (cmdqueue.go).
	//
	// Serve lists, as globs (see Globs in command.go), the commands
	// served through Redis. A request for any other command (without an
	// in-process handler) is answered at once with 404 and never reaches
	// Redis. Nil serves every command.
	Serve []string
	// MaxCommandQueues bounds how many msgbus.<cmd> lists are in use at a
	// time. Default 1000.
	MaxCommandQueues int
	// MaxQueueBytes bounds the bytes of one msgbus.<cmd> list. Default
	// 16 MiB.
	MaxQueueBytes int64
	// MaxCommandBytes bounds the bytes of all msgbus.<cmd> lists
	// together. Default 256 MiB.
	MaxCommandBytes int64
	// CommandSweepInterval is how often msgbus.<cmd> lists are swept of
	// requests past their deadline. Default 1s.
	CommandSweepInterval time.Duration
	// MaxAnswerCacheBytes bounds the signed answers kept for re-sent
	// requests. When full, a new answer is not kept, and a re-sent
	// request it answered is handled again. Default 64 MiB.
	MaxAnswerCacheBytes int64
	// Topics bound the leases and subscriptions of topics (topics.go).
	Topics TopicOptions
}

// minRedisPool is the smallest pool the peer works with: four
// connections kept by its loops (the Redis loop, three popLoops: local,
// reply, topics), and one for everything else.
const minRedisPool = 5

func (o *Options) withDefaults() (Options, error) {
	c := *o
	if c.Identity == nil {
		return c, errors.New("peer: Options.Identity is required")
	}
	if c.Registrar == nil {
		return c, errors.New("peer: Options.Registrar is required")
	}
	if len(c.Relays) == 0 || len(c.Relays) > MaxRelays {
		return c, fmt.Errorf("peer: need 1 to %d relay URLs, got %d", MaxRelays, len(c.Relays))
	}
	if c.Redis != nil && c.Redis.Options().PoolSize < minRedisPool {
		return c, fmt.Errorf("peer: the Redis client's PoolSize is %d; the peer keeps %d connections and needs at least %d",
			c.Redis.Options().PoolSize, minRedisPool-1, minRedisPool)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = Version
	}
	if c.QueueLimit <= 0 {
		c.QueueLimit = 10000
	}
	if c.Workers <= 0 {
		c.Workers = 64
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 20 * time.Second
	}
	if c.PingTimeout <= 0 {
		c.PingTimeout = 10 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(15*time.Second, c.MinBackoff)
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 250 * time.Millisecond
	}
	if _, err := parseGlobs(c.Serve); err != nil {
		return c, fmt.Errorf("peer: Options.Serve: %w", err)
	}
	if c.MaxCommandQueues <= 0 {
		c.MaxCommandQueues = 1000
	}
	if c.MaxQueueBytes <= 0 {
		c.MaxQueueBytes = 16 << 20
	}
	if c.MaxCommandBytes <= 0 {
		c.MaxCommandBytes = 256 << 20
	}
	if c.CommandSweepInterval <= 0 {
		c.CommandSweepInterval = time.Second
	}
	if c.MaxAnswerCacheBytes <= 0 {
		c.MaxAnswerCacheBytes = 64 << 20
	}
	return c, nil
}

// RelayDomain returns the host[:port] of a relay URL, as registered in the
// registrar.
func RelayDomain(relayURL string) (string, error) {
	u, err := url.Parse(relayURL)
	if err != nil {
		return "", fmt.Errorf("peer: bad relay URL %q: %w", relayURL, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" || u.Host == "" {
		return "", fmt.Errorf("peer: bad relay URL %q: want ws://host[:port] or wss://host[:port]", relayURL)
	}
	return u.Host, nil
}

// Peer is one twin's connection to RMB. Create it with New, start it with
// Run. Call, Handle, ReloadPolicy, Twin and Registry may be used
// concurrently from any goroutine.
type Peer struct {
	opts    Options
	log     *slog.Logger
	id      *identity.Identity
	reg     Registrar
	rdb     *redis.Client
	e2e     *e2e.Cache
	metrics *metrics
	domains []string
	relays  []*relayConn

	twin      atomic.Uint32
	ready     chan struct{} // closed once the twin is known
	policy    atomic.Pointer[Policy]
	rr        atomic.Uint32 // round-robin start for sends
	inbound   chan inboundMsg
	resendReq chan struct{} // wakes the resender; buffered 1
	batch     *batchers     // set by Run before anything uses Redis
	topics    *topicState   // topics.go
	// held are the processing-list entries this process handles, by
	// processing list (processing.go). The map is not changed after New.
	held map[string]*holds

	stateMu sync.Mutex
	stateCh chan struct{} // closed and replaced when a relay connects or drops

	handlersMu sync.RWMutex
	handlers   map[string]Handler

	pendMu  sync.Mutex
	pending map[string]*pending // by uid

	seenMu    sync.Mutex
	seen      map[seenKey]int64   // envelopes seen: deadline, unix nanoseconds
	answers   map[seenKey][]byte  // the signed answers to requests in seen
	seenSweep map[int64][]seenKey // keys of seen by the unix second they may go
	// answerBytes is the size of answers, at most MaxAnswerCacheBytes.
	answerBytes int64

	serve globList  // Options.Serve; nil serves all
	cmdq  cmdQueues // the msgbus.<cmd> lists in use (cmdqueue.go)
	rets  retGuard  // ret queues under msgbus. of waiting requests (command.go)
	svc   *svcState // built-ins, acknowledged delivery, HTTP API (builtins.go)

	runMu   sync.Mutex
	running bool
	runCtx  context.Context // Run's context; set before ready is closed
	// graceCtx ends stopGrace after runCtx: answers are still pushed to
	// Redis for that long while the peer stops.
	graceCtx context.Context
	cancel   context.CancelFunc
	done     chan struct{} // closed when Run returns
}

// New checks opts and builds a peer. It does no I/O.
func New(opts *Options) (*Peer, error) {
	if opts == nil {
		return nil, errors.New("peer: nil Options")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Peer{
		opts:      o,
		log:       o.Logger,
		id:        o.Identity,
		reg:       o.Registrar,
		rdb:       o.Redis,
		e2e:       e2e.NewCache(o.Identity.E2EPrivateKey(), 0),
		ready:     make(chan struct{}),
		inbound:   make(chan inboundMsg, 1024),
		resendReq: make(chan struct{}, 1),
		stateCh:   make(chan struct{}),
		handlers:  make(map[string]Handler),
		pending:   make(map[string]*pending),
		seen:      make(map[seenKey]int64),
		answers:   make(map[seenKey][]byte),
		seenSweep: make(map[int64][]seenKey),
		done:      make(chan struct{}),
		held:      map[string]*holds{LocalProcessing: newHolds(), ReplyProcessing: newHolds(), TopicsProcessing: newHolds()},
		serve:     globList(o.Serve),
		cmdq:      cmdQueues{q: make(map[string]*cmdQueue)},
	}
	p.metrics = newMetrics(func() float64 {
		p.pendMu.Lock()
		defer p.pendMu.Unlock()
		return float64(len(p.pending))
	})
	p.registerBoundGauges()
	p.svc = newSvcState(p)
	p.topics = newTopicState(p, o.Topics)
	for _, u := range o.Relays {
		d, err := RelayDomain(u)
		if err != nil {
			return nil, err
		}
		if slices.Contains(p.domains, d) {
			return nil, fmt.Errorf("peer: relay %q listed twice", d)
		}
		p.domains = append(p.domains, d)
		p.relays = append(p.relays, &relayConn{p: p, url: u, domain: d, log: p.log.With("relay", u)})
		p.metrics.relayUp.WithLabelValues(u).Set(0)
	}
	if o.Policy != nil {
		p.policy.Store(o.Policy)
	}
	return p, nil
}

// Twin is the peer's twin id, 0 until Run has found or registered it.
func (p *Peer) Twin() uint32 { return p.twin.Load() }

// Ready is closed once Run has found or registered the twin.
func (p *Peer) Ready() <-chan struct{} { return p.ready }

// Registry is the peer's Prometheus registry.
func (p *Peer) Registry() *prometheus.Registry { return p.metrics.reg }

// ReloadPolicy replaces the policy; nil allows all.
func (p *Peer) ReloadPolicy(pol *Policy) { p.policy.Store(pol) }

// Connected is the number of relay connections that are up.
func (p *Peer) Connected() int {
	n := 0
	for _, r := range p.relays {
		if r.current() != nil {
			n++
		}
	}
	return n
}

// Run finds or registers the twin, connects to the relays and serves until
// ctx is done or Close is called. It returns nil on a clean stop and an
// error when start-up fails. Run may be called once.
func (p *Peer) Run(ctx context.Context) error {
	p.runMu.Lock()
	if p.running {
		p.runMu.Unlock()
		return errors.New("peer: Run called twice")
	}
	p.running = true
	ctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.runCtx = ctx
	// Not cancelled when Run returns: retries of answers that failed to
	// push may still run then, for stopGrace.
	p.graceCtx, _ = detach(ctx, stopGrace)
	p.runMu.Unlock()
	defer close(p.done)
	defer cancel()

	if err := p.register(ctx); err != nil {
		return err
	}
	if p.rdb != nil {
		// The batchers outlive every goroutine below (deferred after
		// wg.Wait): handlers still write while they stop.
		defer p.startBatchers()()
		// Answers the relays kept for us while we were down come in as
		// soon as we connect: know their requests first.
		if err := p.loadPending(ctx); err != nil {
			return nil // stopped while Redis was unavailable
		}
	}
	close(p.ready)
	p.log.Info("peer ready", "twin", p.Twin(), "relays", p.domains, "redis", p.rdb != nil)

	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	for _, r := range p.relays {
		goRun(r.run)
	}
	for range p.opts.Workers {
		goRun(p.inboundWorker)
	}
	goRun(p.sweeper)
	goRun(p.resender)
	goRun(p.topicsRun)
	if w, ok := p.reg.(interface{ Watch(context.Context) error }); ok {
		// Follow the registrar's change feed so cached twins stay fresh.
		goRun(func(ctx context.Context) { w.Watch(ctx) })
	}
	if p.rdb != nil {
		goRun(p.localLoop)
		goRun(p.replyLoop)
		goRun(p.commandSweeper)
		goRun(p.leaseSweeper) // ack.go
	}
	<-ctx.Done()
	wg.Wait()
	p.log.Info("peer stopped", "twin", p.Twin())
	return nil
}

// Close stops Run and waits for it to return. It is safe to call more
// than once and before Run.
func (p *Peer) Close() error {
	p.runMu.Lock()
	running, cancel := p.running, p.cancel
	p.running = true // a later Run fails
	p.runMu.Unlock()
	if running && cancel != nil {
		cancel()
		<-p.done
	}
	return nil
}

// register finds the twin by public key, registers it when missing and
// updates its relays and e2e key when they differ (unless NoUpdate).
func (p *Peer) register(ctx context.Context) error {
	pub := p.id.PublicKey()
	e2eKey := p.id.E2EPublicKey()
	t, err := p.reg.TwinByPublicKey(ctx, pub)
	switch {
	case errors.Is(err, registrar.ErrNotFound):
		t, err = p.reg.Register(ctx, p.id, p.domains)
		if err != nil {
			return fmt.Errorf("peer: register twin at the registrar: %w", err)
		}
		p.log.Info("registered new twin", "twin", t.ID, "relays", p.domains)
	case err != nil:
		return fmt.Errorf("peer: look up own twin at the registrar: %w", err)
	}
	if !sameSet(t.Relays, p.domains) || !bytes.Equal(t.E2EKey, e2eKey) {
		if p.opts.NoUpdate {
			p.log.Warn("registrar record differs from this peer; not updating (no-update)",
				"twin", t.ID, "registered_relays", t.Relays, "relays", p.domains,
				"e2e_key_matches", bytes.Equal(t.E2EKey, e2eKey))
		} else {
			t, err = p.reg.Update(ctx, p.id, t.ID, p.domains, e2eKey)
			if err != nil {
				return fmt.Errorf("peer: update twin at the registrar: %w", err)
			}
			p.log.Info("updated twin at the registrar", "twin", t.ID, "relays", p.domains)
		}
	}
	p.twin.Store(t.ID)
	return nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// stateChanged returns a channel closed at the next relay state change.
func (p *Peer) stateChanged() <-chan struct{} {
	p.stateMu.Lock()
	defer p.stateMu.Unlock()
	return p.stateCh
}

func (p *Peer) notifyState() {
	p.stateMu.Lock()
	close(p.stateCh)
	p.stateCh = make(chan struct{})
	p.stateMu.Unlock()
}
