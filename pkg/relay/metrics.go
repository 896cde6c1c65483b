package relay

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// dropReason says why an envelope was not delivered. Every drop is counted
// under exactly one reason.
type dropReason uint8

const (
	dropMalformed      dropReason = iota // not a parsable envelope
	dropTooBig                           // over MaxEnvelopeSize
	dropWrongSource                      // source is not the sending session
	dropExpired                          // TTL ran out before routing
	dropRateLimited                      // over the twin's rate limit
	dropDenied                           // refused by the routing rules
	dropUnknownTwin                      // destination twin not in the registrar
	dropOffline                          // fail-fast and not connected, or no relays
	dropQueueFull                        // the destination's store queue is full
	dropStoreError                       // the store failed
	dropStoreExpired                     // expired while queued in the store
	dropFederation                       // federation gave up
	dropFederationFull                   // federation queue full
	dropLookup                           // registrar lookup failed
	dropNotBinary                        // text WebSocket message
	dropShutdown                         // relay shutting down
	dropReplay                           // federated envelope accepted before (answered 202)
	dropFuture                           // deadline beyond now + MaxTTL + clock skew
	dropFedAddress                       // federation to a loopback/private/... address refused
	dropTwinQueueFull                    // the destination twin's queues together are full
	dropStoreFull                        // the store is at its total cap
	dropInvalidDest                      // destination twin 0
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"malformed", "too_big", "wrong_source", "expired", "rate_limited",
	"denied", "unknown_twin", "offline", "queue_full", "store_error",
	"store_expired", "federation_failed", "federation_queue_full", "lookup_failed",
	"not_binary", "shutdown", "replay", "future", "federation_address",
	"twin_queue_full", "store_full", "invalid_destination",
}

func (d dropReason) String() string { return dropReasonNames[d] }

// refuseReason says why a connection or request was refused. Every refusal is
// counted under exactly one reason (bad tokens under auth_failures).
type refuseReason uint8

const (
	refuseTwinSessions refuseReason = iota // the twin is at MaxSessionsPerTwin
	refuseAddrSessions                     // the address is at MaxSessionsPerAddress
	refuseReadTimeout                      // an HTTP request body stalled past ReadTimeout
	refuseNetwork                          // the twin may not connect from the client's network
	numRefuseReasons
)

var refuseReasonNames = [numRefuseReasons]string{"twin_sessions", "address_sessions", "read_timeout", "network"}

// routeResult is where an envelope went.
type routeResult uint8

const (
	routedLocal routeResult = iota
	routedStored
	routedFederated
	routedCluster   // handed to the instance holding the session
	routedBroadcast // copied to every live session of the twin (connection "*")
	numRouteResults
)

var routeResultNames = [numRouteResults]string{"local", "stored", "federated", "cluster", "broadcast"}

// counters are the relay's totals. They are plain atomics so that the hot
// path does not allocate or look up label values; Prometheus reads them
// through CounterFuncs and the admin API through snapshot.
type counters struct {
	msgsIn, bytesIn         atomic.Uint64 // from WebSocket sessions
	fedMsgsIn, fedBytesIn   atomic.Uint64 // from federation POSTs
	msgsOut, bytesOut       atomic.Uint64 // written to WebSocket sessions
	fedMsgsOut, fedBytesOut atomic.Uint64 // accepted by remote relays
	errorsSent              atomic.Uint64 // error envelopes generated
	pongs                   atomic.Uint64 // app-level pongs sent
	connects, replaced      atomic.Uint64
	authFailures            atomic.Uint64
	routed                  [numRouteResults]atomic.Uint64
	drops                   [numDropReasons]atomic.Uint64
	refused                 [numRefuseReasons]atomic.Uint64
	stored                  atomic.Int64  // this process's view of the store depth
	broadcastCopies         atomic.Uint64 // copies of broadcast envelopes given to sessions here
}

func (c *counters) drop(r dropReason) { c.drops[r].Add(1) }

func (c *counters) refuse(r refuseReason) { c.refused[r].Add(1) }

// Stats is a snapshot of the relay's counters, as served by GET /api/stats.
type Stats struct {
	Sessions         int               `json:"sessions"`
	MessagesIn       uint64            `json:"messages_in"`
	BytesIn          uint64            `json:"bytes_in"`
	MessagesOut      uint64            `json:"messages_out"`
	BytesOut         uint64            `json:"bytes_out"`
	FederatedIn      uint64            `json:"federated_in"`
	FederatedBytesIn uint64            `json:"federated_bytes_in"`
	FederatedOut     uint64            `json:"federated_out"`
	ErrorsSent       uint64            `json:"errors_sent"`
	Pongs            uint64            `json:"pongs"`
	Connects         uint64            `json:"connects"`
	Replaced         uint64            `json:"replaced"`
	AuthFailures     uint64            `json:"auth_failures"`
	Routed           map[string]uint64 `json:"routed"`
	Dropped          map[string]uint64 `json:"dropped"`
	Refused          map[string]uint64 `json:"refused"`
	Stored           int64             `json:"stored"`
	FederationQueue  int               `json:"federation_queue"`
}

// metrics is the relay's Prometheus registry.
type metrics struct {
	reg        *prometheus.Registry
	latency    prometheus.Histogram
	fedResults *prometheus.CounterVec // domain, result
}

func newMetrics(r *Relay) *metrics {
	c := &r.counters
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string, v *atomic.Uint64, labels prometheus.Labels) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "rmb", Subsystem: "relay", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	m.reg.MustRegister(
		counter("messages_in_total", "Envelopes received.", &c.msgsIn, prometheus.Labels{"via": "websocket"}),
		counter("messages_in_total", "Envelopes received.", &c.fedMsgsIn, prometheus.Labels{"via": "federation"}),
		counter("bytes_in_total", "Envelope bytes received.", &c.bytesIn, prometheus.Labels{"via": "websocket"}),
		counter("bytes_in_total", "Envelope bytes received.", &c.fedBytesIn, prometheus.Labels{"via": "federation"}),
		counter("messages_out_total", "Envelopes sent.", &c.msgsOut, prometheus.Labels{"via": "websocket"}),
		counter("messages_out_total", "Envelopes sent.", &c.fedMsgsOut, prometheus.Labels{"via": "federation"}),
		counter("bytes_out_total", "Envelope bytes sent.", &c.bytesOut, prometheus.Labels{"via": "websocket"}),
		counter("bytes_out_total", "Envelope bytes sent.", &c.fedBytesOut, prometheus.Labels{"via": "federation"}),
		counter("error_envelopes_total", "Error envelopes generated by the relay.", &c.errorsSent, nil),
		counter("pongs_total", "App-level pongs sent.", &c.pongs, nil),
		counter("connects_total", "Accepted WebSocket sessions.", &c.connects, nil),
		counter("sessions_replaced_total", "Sessions replaced by a newer connection.", &c.replaced, nil),
		counter("broadcast_copies_total", "Copies of envelopes to every session of a twin (connection \"*\") given to sessions of this relay (instance).", &c.broadcastCopies, nil),
		counter("auth_failures_total", "Refused connection attempts.", &c.authFailures, nil),
	)
	for i := range numRouteResults {
		m.reg.MustRegister(counter("routed_total", "Envelopes routed, by where they went.",
			&c.routed[i], prometheus.Labels{"result": routeResultNames[i]}))
	}
	for i := range numDropReasons {
		m.reg.MustRegister(counter("dropped_total", "Envelopes not delivered, by reason.",
			&c.drops[i], prometheus.Labels{"reason": dropReasonNames[i]}))
	}
	for i := range numRefuseReasons {
		m.reg.MustRegister(counter("refused_total", "Connections and requests refused, by reason (bad tokens: auth_failures_total).",
			&c.refused[i], prometheus.Labels{"reason": refuseReasonNames[i]}))
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "rmb", Subsystem: "relay", Name: name, Help: help}, f)
	}
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "rmb", Subsystem: "relay", Name: "routing_seconds",
		Help:    "Time to route one inbound envelope (until queued, stored or handed to federation).",
		Buckets: prometheus.ExponentialBuckets(5e-6, 4, 10),
	})
	m.fedResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "rmb", Subsystem: "relay", Name: "federation_requests_total",
		Help: "Federation POSTs to other relays, by domain and result.",
	}, []string{"domain", "result"})
	m.reg.MustRegister(
		gauge("sessions", "Live WebSocket sessions.", func() float64 { return float64(r.sessionCount()) }),
		gauge("send_queue_depth", "Envelopes waiting in session send queues.", func() float64 { return float64(r.sendQueueDepth()) }),
		gauge("stored_messages", "Envelopes this process put in the store and has not taken out.", func() float64 { return float64(c.stored.Load()) }),
		gauge("federation_queue_depth", "Envelopes waiting for a federation worker.", func() float64 { return float64(r.fed.depth()) }),
		gauge("federation_held_jobs", "Envelopes accepted for federation and not yet posted or given up (waiting, posting, in backoff).", func() float64 { n, _ := r.fed.held(); return float64(n) }),
		gauge("federation_held_bytes", "Bytes of the envelopes counted by federation_held_jobs.", func() float64 { _, b := r.fed.held(); return float64(b) }),
		m.latency, m.fedResults,
	)
	if r.cl != nil {
		r.cl.register(m.reg)
	}
	return m
}

func (r *Relay) stats() Stats {
	c := &r.counters
	s := Stats{
		Sessions:         r.sessionCount(),
		MessagesIn:       c.msgsIn.Load(),
		BytesIn:          c.bytesIn.Load(),
		MessagesOut:      c.msgsOut.Load(),
		BytesOut:         c.bytesOut.Load(),
		FederatedIn:      c.fedMsgsIn.Load(),
		FederatedBytesIn: c.fedBytesIn.Load(),
		FederatedOut:     c.fedMsgsOut.Load(),
		ErrorsSent:       c.errorsSent.Load(),
		Pongs:            c.pongs.Load(),
		Connects:         c.connects.Load(),
		Replaced:         c.replaced.Load(),
		AuthFailures:     c.authFailures.Load(),
		Routed:           make(map[string]uint64),
		Dropped:          make(map[string]uint64),
		Refused:          make(map[string]uint64),
		Stored:           c.stored.Load(),
		FederationQueue:  r.fed.depth(),
	}
	for i := range numRouteResults {
		s.Routed[routeResultNames[i]] = c.routed[i].Load()
	}
	for i := range numDropReasons {
		s.Dropped[dropReasonNames[i]] = c.drops[i].Load()
	}
	for i := range numRefuseReasons {
		s.Refused[refuseReasonNames[i]] = c.refused[i].Load()
	}
	return s
}
