package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// Directory looks twins up; *registrar.Client satisfies it. It must answer
// an error wrapping registrar.ErrNotFound for a twin that does not exist,
// and should cache: the relay asks on every envelope whose destination is
// not connected here.
type Directory interface {
	Twin(ctx context.Context, id uint32) (*registrar.Twin, error)
}

// Options configure a Relay. Zero fields mean the documented defaults.
type Options struct {
	// Domains are this relay's domains ("host" or "host:port", as twins list
	// them in the registrar). A twin that lists one of them belongs here.
	// Required.
	Domains []string
	// Directory looks up twins. Required.
	Directory Directory
	// Store keeps envelopes for sessions that are offline or slow. Default:
	// NewMemStore(StoreOptions).
	Store Store
	// StoreOptions bound the default memory store (per session, per twin
	// and in total; see StoreOptions for the defaults). Ignored when Store
	// is set: give the same options to NewRedisStore.
	StoreOptions *StoreOptions
	// Logger receives structured logs. Default: discard.
	Logger *slog.Logger
	// MaxEnvelopeSize bounds one envelope, on WebSocket frames (close 1009
	// above it) and federation bodies (413). Default 1 MiB.
	MaxEnvelopeSize int
	// TokenPolicy bounds token lifetime and clock skew (identity defaults:
	// 1 hour, 30 seconds).
	TokenPolicy identity.TokenPolicy

	// SendQueueSize is the bound of each session's in-memory send queue;
	// when it is full, envelopes go to the Store. Default 256.
	SendQueueSize int
	// SendQueueBytes bounds the bytes in each session's send queue; an
	// envelope that would go over it goes to the Store, like one that finds
	// the queue full. Default 4 MiB.
	SendQueueBytes int64
	// WriteTimeout bounds one WebSocket write; a session whose write times
	// out is closed. Default 10 seconds.
	WriteTimeout time.Duration
	// ReadTimeout bounds reading each HTTP request that is not a WebSocket
	// upgrade, its body included (federation POST / among them): a request
	// that stalls is closed. The event stream of the status page lifts it
	// once its request is read. The http.Server bounds the headers (its
	// ReadHeaderTimeout; rmb-relay sets --header-timeout). Default 30
	// seconds.
	ReadTimeout time.Duration
	// PingInterval is how long a session may stay silent before the relay
	// sends a WebSocket ping; a ping unanswered within PingTimeout closes the
	// session. Defaults 30 and 15 seconds.
	PingInterval time.Duration
	PingTimeout  time.Duration

	// FederationScheme is the scheme of federation POSTs. Default "https".
	FederationScheme string
	// FederationClient sends federation POSTs. Default: a client with
	// keep-alive and 16 idle connections per relay.
	FederationClient *http.Client
	// FederationWorkers is the number of senders per destination domain.
	// Default 4.
	FederationWorkers int
	// FederationQueueSize bounds the jobs held for each destination domain
	// (waiting, being posted or in a retry backoff), and those of each
	// source twin. Default 1024.
	FederationQueueSize int
	// FederationQueueBytes bounds the bytes of those jobs. Default 16 MiB.
	FederationQueueBytes int64
	// FederationMaxJobs and FederationMaxBytes bound the jobs held for all
	// domains together. Defaults 16384 and 256 MiB. Over any bound a new
	// envelope is refused ("federation queue is full").
	FederationMaxJobs  int
	FederationMaxBytes int64
	// FederationIdleTimeout is how long a destination domain without jobs
	// keeps its queue and its metric series. Default 1 minute.
	FederationIdleTimeout time.Duration
	// FederationAllowPrivate allows federation to loopback, private,
	// link-local and multicast addresses. Default false: the default
	// FederationClient refuses to connect to them (checked on the address
	// dialled, after name resolution) and such an envelope gets an error.
	// Tests and private deployments set it.
	FederationAllowPrivate bool
	// FederationRedis, when set, keeps the accepted federation jobs in Redis
	// until they are posted, so a relay that crashes posts them when it
	// starts again on the same Redis with the same first domain. Default:
	// in memory only.
	FederationRedis redis.UniversalClient
	// FederationTimeout bounds one federation POST. Default 10 seconds.
	FederationTimeout time.Duration
	// RetryBackoff and MaxRetryBackoff shape the retry delay after a round
	// of failed attempts (doubling from RetryBackoff). Defaults 500 ms and
	// 30 seconds.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// RankerPeriod is the window over which relay failures are counted to
	// rank a twin's relays. Default 1 hour.
	RankerPeriod time.Duration

	// MaxSessionsPerTwin bounds the concurrent sessions of one twin (a new
	// connection of a session id that is live replaces it and is always
	// let in). Default 64. In a cluster it counts the twin's sessions on
	// all instances (leases in Redis; see clusterlimits.go).
	MaxSessionsPerTwin int
	// MaxSessionsPerAddress bounds the concurrent sessions from one remote
	// address (of any twins; an IPv6 address counts as its /64). Default
	// 256.
	MaxSessionsPerAddress int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For header
	// names the client's address. A request from anywhere else counts
	// against its own remote address, whatever it claims. Default: none.
	TrustedProxies []netip.Prefix

	// RateLimit limits each twin's envelopes; nil means no limit. In a
	// cluster one bucket per twin in Redis serves all instances.
	RateLimit *RateLimit
	// Policy is the initial access policy (allow list and routing rules);
	// nil allows everything. Replace it at runtime with SetPolicy.
	Policy *Policy
	// AdminToken enables the /api/ admin endpoints, which then require
	// "Authorization: Bearer <AdminToken>", and the sessions list of the
	// status page. Default "": admin API disabled.
	AdminToken string
	// Version is shown on the status page (GET /). Default "dev".
	Version string
	// NATS, when set, makes this relay one instance of a cluster: the
	// instances with the same Domains, the same NATS servers and the same
	// shared Store (a RedisStore: required) are one logical relay (see
	// docs/internals.md, "Relay cluster"). Each entry is a NATS URL
	// (nats://host:port). Default: none, a single-process relay.
	NATS []string
	// Instance names this instance in logs, metrics and the status page.
	// Default DefaultInstance() (the host name).
	Instance string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Relay routes envelopes between WebSocket sessions, its store and other
// relays. It never listens: serve Handler. All methods are safe for
// concurrent use.
type Relay struct {
	// Set by New, read-only afterwards.
	opts    Options
	domains map[string]bool // lower-cased
	log     *slog.Logger
	store   Store
	metrics *metrics
	fed     *federator
	limiter *limiter // nil without a rate limit
	cl      *cluster // nil without Options.NATS
	status  *statusPage
	handler http.Handler
	ctx     context.Context // cancelled by Shutdown
	cancel  context.CancelFunc
	// realClock: Options.Now was not set, so handleFrame reads the clock
	// once per envelope instead of twice.
	realClock bool

	counters counters               // atomics, any goroutine
	policy   atomic.Pointer[Policy] // swapped by SetPolicy

	domainCheck *domainCheck // twins that list other relays (domains.go)

	mu       sync.Mutex                     // guards the following
	sessions map[uint32]map[string]*session // twin -> sid -> live session
	closing  bool                           // Shutdown was called
	nsess    int                            // number of sessions in the map
	joining  map[uint32]int                 // twin -> sessions admitted, not registered yet
	perAddr  map[string]int                 // client address -> sessions admitted and not ended

	conns       sync.WaitGroup // session handlers; Add under mu while !closing
	janitorDone chan struct{}  // closed when janitor returns
}

// New returns a relay for opts.
func New(opts *Options) (*Relay, error) {
	if opts == nil {
		return nil, errors.New("relay: options are required")
	}
	o := *opts
	if len(o.Domains) == 0 {
		return nil, errors.New("relay: at least one domain is required")
	}
	if o.Directory == nil {
		return nil, errors.New("relay: a Directory is required")
	}
	if o.Store == nil {
		o.Store = NewMemStore(o.StoreOptions)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxEnvelopeSize <= 0 {
		o.MaxEnvelopeSize = envelope.DefaultMaxSize
	}
	if o.SendQueueBytes <= 0 {
		o.SendQueueBytes = 4 << 20
	}
	if o.SendQueueSize <= 0 {
		o.SendQueueSize = 256
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 30 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 15 * time.Second
	}
	if o.FederationScheme == "" {
		o.FederationScheme = "https"
	}
	if o.FederationClient == nil {
		o.FederationClient = newFederationClient(o.FederationAllowPrivate)
	}
	if o.FederationWorkers <= 0 {
		o.FederationWorkers = 4
	}
	if o.FederationQueueSize <= 0 {
		o.FederationQueueSize = 1024
	}
	if o.FederationQueueBytes <= 0 {
		o.FederationQueueBytes = 16 << 20
	}
	if o.FederationMaxJobs <= 0 {
		o.FederationMaxJobs = 16384
	}
	if o.FederationMaxBytes <= 0 {
		o.FederationMaxBytes = 256 << 20
	}
	if o.FederationIdleTimeout <= 0 {
		o.FederationIdleTimeout = time.Minute
	}
	if o.FederationTimeout <= 0 {
		o.FederationTimeout = 10 * time.Second
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 500 * time.Millisecond
	}
	if o.MaxRetryBackoff <= 0 {
		o.MaxRetryBackoff = 30 * time.Second
	}
	if o.MaxSessionsPerTwin <= 0 {
		o.MaxSessionsPerTwin = 64
	}
	if o.MaxSessionsPerAddress <= 0 {
		o.MaxSessionsPerAddress = 256
	}
	if o.RankerPeriod <= 0 {
		o.RankerPeriod = time.Hour
	}
	if o.Instance == "" {
		o.Instance = DefaultInstance()
	}
	realClock := o.Now == nil
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Relay{
		opts:        o,
		realClock:   realClock,
		domains:     make(map[string]bool),
		log:         o.Logger,
		store:       o.Store,
		sessions:    make(map[uint32]map[string]*session),
		joining:     make(map[uint32]int),
		perAddr:     make(map[string]int),
		janitorDone: make(chan struct{}),
	}
	for _, d := range o.Domains {
		r.domains[strings.ToLower(d)] = true
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if o.RateLimit != nil {
		l, err := newLimiter(*o.RateLimit)
		if err != nil {
			return nil, err
		}
		r.limiter = l
	}
	r.policy.Store(o.Policy)
	if len(o.NATS) > 0 {
		cl, err := newCluster(r)
		if err != nil {
			r.cancel()
			return nil, err
		}
		r.cl = cl
		r.log = r.log.With("instance", o.Instance)
		if r.limiter != nil {
			cl.rate = newSharedLimiter(cl, r.limiter)
		}
	}
	r.fed = newFederator(r)
	r.metrics = newMetrics(r)
	r.domainCheck = newDomainCheck(r) // domains.go
	r.handler = r.routes()
	if err := r.fed.start(r.ctx); err != nil {
		r.fed.stop()
		r.cancel()
		r.closeCluster()
		return nil, err
	}
	if r.cl != nil {
		go r.adoptLoop()
	}
	go r.janitor()
	return r, nil
}

// Registry is the relay's own Prometheus registry, served on /metrics.
func (r *Relay) Registry() *prometheus.Registry { return r.metrics.reg }

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() Stats { return r.stats() }

// Handler serves everything: a WebSocket upgrade on any path is a session,
// POST / is federation, GET / the status page (with /status.json and
// /status/events), GET /metrics, GET /healthz, and the admin API under
// /api/.
func (r *Relay) Handler() http.Handler { return r.handler }

func (r *Relay) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		closing := r.closing
		r.mu.Unlock()
		if closing {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /{$}", r.handleFederation)
	mux.Handle("/api/", r.adminHandler())
	r.statusRoutes(mux) // GET /, /status.json, /status/events (status.go)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if isWebSocket(req) {
			r.handleConnect(w, req)
			return
		}
		// ErrNotSupported (a server that is not an http.Server): nothing
		// to bound here.
		err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(r.opts.ReadTimeout))
		if err == nil && req.Body != nil && req.Body != http.NoBody {
			req.Body = &deadlineBody{ReadCloser: req.Body, r: r}
		}
		mux.ServeHTTP(w, req)
	})
}

// deadlineBody counts a request body that ran into ReadTimeout.
type deadlineBody struct {
	io.ReadCloser
	r       *Relay
	counted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.counted && errors.Is(err, os.ErrDeadlineExceeded) {
		b.counted = true
		b.r.counters.refuse(refuseReadTimeout)
	}
	return n, err
}

func isWebSocket(req *http.Request) bool {
	return req.Method == http.MethodGet && headerHasToken(req.Header, "Connection", "upgrade") &&
		headerHasToken(req.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// isOurs reports whether one of relays is one of our domains.
func (r *Relay) isOurs(relays []string) bool {
	for _, d := range relays {
		if r.domains[strings.ToLower(d)] || r.domainCheck.isAlias(d) {
			return true
		}
	}
	return false
}

// janitor sweeps expired envelopes from a MemStore and idle rate-limit
// buckets, until Shutdown.
func (r *Relay) janitor() {
	defer close(r.janitorDone)
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			now := r.opts.Now()
			if sw, ok := r.store.(sweeper); ok {
				if n := sw.Sweep(now); n > 0 {
					r.counters.drops[dropStoreExpired].Add(uint64(n))
					r.counters.stored.Add(-int64(n))
				}
			}
			if r.cl != nil && r.cl.rate != nil {
				r.cl.rate.sweep(now)
			} else if r.limiter != nil {
				r.limiter.sweep(now)
			}
		}
	}
}

// Shutdown refuses new sessions, closes the live ones (going away; their
// unsent envelopes go back to the store), posts what the federation
// queues hold (for at most 5 s), stops federation and waits for
// everything to end or ctx to expire. What federation still holds then
// is dropped and counted.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closing = true
	var live []*session
	for _, m := range r.sessions {
		for _, s := range m {
			live = append(live, s)
		}
	}
	r.mu.Unlock()
	for _, s := range live {
		s.close(statusGoingAway, "relay shutting down")
	}
	done := make(chan struct{})
	go func() {
		r.conns.Wait()
		// Answers a session passed on just before are in the queues:
		// dropped, their callers would wait for their whole TTL.
		r.fed.drain(ctx)
		r.closeCluster()
		r.cancel()
		r.fed.stop()
		<-r.janitorDone
		close(done)
	}()
	// Sessions need the relay context to push their leftovers to the store,
	// so it is cancelled only after they ended, or when ctx gives up.
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		r.closeCluster()
		r.cancel()
		return ctx.Err()
	}
}

// closeCluster leaves the NATS cluster, if this relay is in one.
func (r *Relay) closeCluster() {
	if r.cl != nil {
		r.cl.close()
	}
}
