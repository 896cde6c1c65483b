package relay

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The status page: a live, read-only view of the relay for people.
//
//	GET /               the page (status.html: inline CSS and JS, no external assets)
//	GET /status.json    one snapshot (statusSnapshot); with the admin token also the sessions
//	                    (?sort=twin|sid|remote|connected|in|out|bytes_in|bytes_out|drops|queue|queue_bytes,
//	                    &desc=1, &offset=N, &limit=N up to maxStatusSessions; default by twin, 100);
//	                    with ?history=1 also the samples of the last hour (statushistory.go)
//	GET /status/events  server-sent events: one public snapshot per second
//
// Without "Authorization: Bearer <AdminToken>" a snapshot holds aggregate
// figures only: counters, the relay's domains and the domains of the relays
// it federates with, never a twin id, a session id or a remote address. A
// request that carries an Authorization header with any other value, or
// any Authorization header when AdminToken is unset, is answered 401 rather
// than silently downgraded, so a mistyped token shows as such.
//
// The token is never accepted in the URL (it would end up in access logs,
// browser history and Referer headers). The page asks for it in a password
// field, keeps it in the tab's memory only and sends it as a header with
// fetch. EventSource cannot set headers, so the admin view polls
// /status.json every second instead of listening to /status/events; the
// event stream is always the public view.
//
// At most maxStatusStreams event streams run at once; more are refused with
// 503 and the page falls back to polling. A stream ends when its client goes
// away, when the relay shuts down, or when the http.Server serving it shuts
// down (http.Server.Shutdown waits for active requests, and a stream would
// otherwise hold it up until its deadline).

//go:embed status.html
var statusHTML []byte

// statusCSP allows exactly the page's own inline style and script (by
// hash), requests to this origin, and nothing else.
var statusCSP = func() string {
	hash := func(tag string) string {
		open, end := "<"+tag+">", "</"+tag+">"
		i := bytes.Index(statusHTML, []byte(open))
		j := bytes.Index(statusHTML, []byte(end))
		if i < 0 || j < i {
			panic("relay: status.html has no <" + tag + "> element")
		}
		sum := sha256.Sum256(statusHTML[i+len(open) : j])
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; style-src " + hash("style") + "; script-src " + hash("script") +
		"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

const (
	// maxStatusStreams bounds the concurrent /status/events streams.
	maxStatusStreams = 64
	// statusInterval is the period of the event stream.
	statusInterval = time.Second
	// maxStatusSessions and maxStatusPeers bound the lists of a snapshot;
	// the totals are always given.
	maxStatusSessions = 1000
	maxStatusPeers    = 200
	// defaultStatusSessions is the page size of the sessions list.
	defaultStatusSessions = 100
)

// statusSnapshot is the JSON document of /status.json and of each event.
type statusSnapshot struct {
	Time      time.Time `json:"time"`
	Version   string    `json:"version"`
	Domains   []string  `json:"domains"`
	StartedAt time.Time `json:"started_at"`
	Uptime    float64   `json:"uptime_seconds"`
	Stats     Stats     `json:"stats"`
	// FederatedBytesOut completes Stats: bytes accepted by other relays.
	FederatedBytesOut uint64       `json:"federated_bytes_out"`
	Peers             []peerStatus `json:"peers"`
	PeersTotal        int          `json:"peers_total"`
	// Streams is the number of open /status/events streams.
	Streams int `json:"streams"`
	// Latency is the routing latency over the latest sample interval;
	// Process the relay process's memory and goroutines; Health the latest
	// checks of the registrar and the Redis store (none for a memory store
	// or a Directory that cannot be checked).
	Latency latencyStatus  `json:"latency"`
	Process processStatus  `json:"process"`
	Health  []healthStatus `json:"health"`
	// Sample is the latest sample of the history (every 5 s); History,
	// with ?history=1, all of them (the last hour), oldest first.
	Sample  *statusSample  `json:"sample"`
	History []statusSample `json:"history,omitempty"`
	// Admin is set when the request carried the admin token; only then
	// are Sessions listed: one page of at most maxStatusSessions, sorted
	// as asked, out of SessionsTotal from SessionsOffset on.
	Admin          bool          `json:"admin"`
	Sessions       []SessionInfo `json:"sessions,omitempty"`
	SessionsTotal  int           `json:"sessions_total,omitempty"`
	SessionsOffset int           `json:"sessions_offset,omitempty"`
	// Instance and NATS (the NATS connection state: connected,
	// reconnecting, closed, ...) are set in a relay cluster.
	Instance string `json:"instance,omitempty"`
	NATS     string `json:"nats,omitempty"`
	// Cluster lists the instances that answered the latest survey (every
	// 5 s) with their sessions and NATS state.
	Cluster []InstanceStatus `json:"cluster,omitempty"`
}

// peerStatus is the health of one relay this relay federates with.
type peerStatus struct {
	Domain string `json:"domain"`
	// Queue is the number of envelopes held for the relay: waiting for a
	// worker, being posted or waiting out a retry backoff.
	Queue int `json:"queue"`
	// Success, Failure and Refused count POSTs since start: accepted,
	// failed (network error, 5xx, 408, 429) and refused for good (other
	// 4xx).
	Success uint64 `json:"success"`
	Failure uint64 `json:"failure"`
	Refused uint64 `json:"refused"`
	// RecentFailures are the failures within RankerPeriod, which rank the
	// relay; LastFailure is the latest of them. The federator does not keep
	// error texts: see the relay's logs (debug level) for those.
	RecentFailures int        `json:"recent_failures"`
	LastFailure    *time.Time `json:"last_failure,omitempty"`
}

// statusPage serves the page, the snapshots and the event streams.
type statusPage struct {
	// Set by newStatusPage, read-only afterwards.
	r       *Relay
	hist    *statusHistory
	started time.Time
	version string
	admin   []byte // "Bearer <AdminToken>"; nil without a token

	streams chan struct{} // semaphore of the event streams, cap maxStatusStreams

	mu       sync.Mutex                     // guards the following
	shutdown map[*http.Server]chan struct{} // closed when that server shuts down
}

// statusRoutes registers the status page on mux.
func (r *Relay) statusRoutes(mux *http.ServeMux) {
	p := &statusPage{
		r:        r,
		hist:     newStatusHistory(r),
		started:  r.opts.Now(),
		version:  cmp.Or(r.opts.Version, "dev"),
		streams:  make(chan struct{}, maxStatusStreams),
		shutdown: make(map[*http.Server]chan struct{}),
	}
	if r.opts.AdminToken != "" {
		p.admin = []byte("Bearer " + r.opts.AdminToken)
	}
	r.status = p
	go p.hist.run(r.ctx)
	mux.HandleFunc("GET /{$}", p.servePage)
	mux.HandleFunc("GET /status.json", p.serveJSON)
	mux.HandleFunc("GET /status/events", p.serveEvents)
}

func (p *statusPage) servePage(w http.ResponseWriter, req *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(statusHTML)
}

// authorized reports whether req carries the admin token; ok is false when
// it carries some other Authorization header.
func (p *statusPage) authorized(req *http.Request) (admin, ok bool) {
	got := req.Header.Get("Authorization")
	if got == "" {
		return false, true
	}
	if p.admin != nil && subtle.ConstantTimeCompare([]byte(got), p.admin) == 1 {
		return true, true
	}
	return false, false
}

func (p *statusPage) serveJSON(w http.ResponseWriter, req *http.Request) {
	admin, ok := p.authorized(req)
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "wrong admin token"})
		return
	}
	q, err := parseStatusQuery(req)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	s := p.snapshot(admin, q)
	if q.history {
		s.History = p.hist.history()
	}
	writeJSON(w, http.StatusOK, s)
}

// statusQuery is what a /status.json request asks for.
type statusQuery struct {
	sort    string // a key of sessionOrder
	desc    bool
	offset  int
	limit   int
	history bool
}

// sessionOrder are the orders of the sessions list; ties go by twin and
// sid.
var sessionOrder = map[string]func(a, b SessionInfo) int{
	"twin":        func(a, b SessionInfo) int { return 0 },
	"sid":         func(a, b SessionInfo) int { return strings.Compare(a.SID, b.SID) },
	"remote":      func(a, b SessionInfo) int { return strings.Compare(a.Remote, b.Remote) },
	"connected":   func(a, b SessionInfo) int { return a.ConnectedAt.Compare(b.ConnectedAt) },
	"in":          func(a, b SessionInfo) int { return cmp.Compare(a.MessagesIn, b.MessagesIn) },
	"out":         func(a, b SessionInfo) int { return cmp.Compare(a.MessagesOut, b.MessagesOut) },
	"bytes_in":    func(a, b SessionInfo) int { return cmp.Compare(a.BytesIn, b.BytesIn) },
	"bytes_out":   func(a, b SessionInfo) int { return cmp.Compare(a.BytesOut, b.BytesOut) },
	"drops":       func(a, b SessionInfo) int { return cmp.Compare(a.Dropped, b.Dropped) },
	"queue":       func(a, b SessionInfo) int { return cmp.Compare(a.SendQueue, b.SendQueue) },
	"queue_bytes": func(a, b SessionInfo) int { return cmp.Compare(a.SendQueueBytes, b.SendQueueBytes) },
}

// parseStatusQuery reads the query of /status.json; a bad value is an
// error naming it.
func parseStatusQuery(req *http.Request) (statusQuery, error) {
	v := req.URL.Query()
	q := statusQuery{sort: "twin", limit: defaultStatusSessions}
	if s := v.Get("sort"); s != "" {
		if sessionOrder[s] == nil {
			keys := slices.Sorted(maps.Keys(sessionOrder))
			return q, fmt.Errorf("sort: unknown order %q (one of %s)", s, strings.Join(keys, ", "))
		}
		q.sort = s
	}
	flag := func(name string) (bool, error) {
		switch v.Get(name) {
		case "", "0", "false":
			return false, nil
		case "1", "true":
			return true, nil
		}
		return false, fmt.Errorf("%s: want 1 or 0, got %q", name, v.Get(name))
	}
	var err error
	if q.desc, err = flag("desc"); err != nil {
		return q, err
	}
	if q.history, err = flag("history"); err != nil {
		return q, err
	}
	num := func(name string, lo, hi int, dst *int) error {
		s := v.Get(name)
		if s == "" {
			return nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%s: want a number from %d to %d, got %q", name, lo, hi, s)
		}
		*dst = n
		return nil
	}
	if err := num("offset", 0, math.MaxInt32, &q.offset); err != nil {
		return q, err
	}
	if err := num("limit", 1, maxStatusSessions, &q.limit); err != nil {
		return q, err
	}
	return q, nil
}

// serveEvents streams a public snapshot every statusInterval until the
// client goes away or the relay or server shuts down.
func (p *statusPage) serveEvents(w http.ResponseWriter, req *http.Request) {
	select {
	case p.streams <- struct{}{}:
		defer func() { <-p.streams }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many status streams; poll /status.json", http.StatusServiceUnavailable)
		return
	}
	serverDone := p.serverDone(req)
	rc := http.NewResponseController(w)
	// The request is read: the stream outlives ReadTimeout (with it, the
	// server would end the stream when it passed).
	rc.SetReadDeadline(time.Time{})
	// The deadline set for each event must not outlive the stream on a
	// kept-alive connection.
	defer rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	var buf bytes.Buffer
	buf.WriteString("retry: 2000\n")
	for {
		b, err := json.Marshal(p.snapshot(false, statusQuery{}))
		if err != nil {
			return
		}
		buf.WriteString("data: ")
		buf.Write(b)
		buf.WriteString("\n\n")
		rc.SetWriteDeadline(time.Now().Add(p.r.opts.WriteTimeout)) // ErrNotSupported: nothing to do
		if _, err := w.Write(buf.Bytes()); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		buf.Reset()
		select {
		case <-req.Context().Done():
			return
		case <-p.r.ctx.Done():
			return
		case <-serverDone:
			return
		case <-t.C:
		}
		if p.closing() {
			return
		}
	}
}

// serverDone returns a channel closed when the http.Server serving req
// shuts down (nil when unknown). One hook is registered per server.
func (p *statusPage) serverDone(req *http.Request) <-chan struct{} {
	srv, _ := req.Context().Value(http.ServerContextKey).(*http.Server)
	if srv == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := p.shutdown[srv]
	if ch == nil {
		ch = make(chan struct{})
		p.shutdown[srv] = ch
		srv.RegisterOnShutdown(func() { close(ch) })
	}
	return ch
}

// closing reports whether the relay's Shutdown has begun.
func (p *statusPage) closing() bool {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	return p.r.closing
}

// snapshot assembles the current figures; sessions (the page q asks for)
// only when admin.
func (p *statusPage) snapshot(admin bool, q statusQuery) statusSnapshot {
	r := p.r
	now := r.opts.Now()
	s := statusSnapshot{
		Time:              now.UTC(),
		Version:           p.version,
		Domains:           r.opts.Domains,
		StartedAt:         p.started.UTC(),
		Uptime:            now.Sub(p.started).Seconds(),
		Stats:             r.stats(),
		FederatedBytesOut: r.counters.fedBytesOut.Load(),
		Streams:           len(p.streams),
		Admin:             admin,
		Process:           readProcess(),
		Health:            p.hist.healthView(admin),
	}
	s.Sample, s.Latency = p.hist.latest()
	if r.cl != nil {
		s.Instance, s.NATS, s.Cluster = r.opts.Instance, r.cl.state(), r.cl.instances()
	}
	s.Peers = r.fed.peers()
	s.PeersTotal = len(s.Peers)
	if len(s.Peers) > maxStatusPeers {
		s.Peers = s.Peers[:maxStatusPeers]
	}
	if admin {
		all := r.Sessions()
		order := sessionOrder[q.sort]
		if order == nil {
			order = sessionOrder["twin"]
		}
		slices.SortFunc(all, func(a, b SessionInfo) int {
			c := order(a, b)
			if q.desc {
				c = -c
			}
			return cmp.Or(c, cmp.Compare(a.Twin, b.Twin), strings.Compare(a.SID, b.SID))
		})
		limit := q.limit
		if limit <= 0 || limit > maxStatusSessions {
			limit = defaultStatusSessions
		}
		off := min(q.offset, len(all))
		s.Sessions = all[off:min(off+limit, len(all))]
		s.SessionsTotal, s.SessionsOffset = len(all), off
		if len(s.Sessions) == 0 {
			s.Sessions = []SessionInfo{}
		}
	}
	return s
}

// peers is a read-only view of the federator: every relay it has queued
// for, posted to or seen fail, by domain. It ranks the relays that fail
// most first, then by domain.
func (f *federator) peers() []peerStatus {
	byDomain := make(map[string]*peerStatus)
	peer := func(d string) *peerStatus {
		d = strings.ToLower(d)
		p := byDomain[d]
		if p == nil {
			p = &peerStatus{Domain: d}
			byDomain[d] = p
		}
		return p
	}

	for d, n := range f.heldByDomain() {
		peer(d).Queue = n
	}

	ch := make(chan prometheus.Metric)
	go func() {
		f.r.metrics.fedResults.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		var domain, result string
		for _, l := range pb.GetLabel() {
			switch l.GetName() {
			case "domain":
				domain = l.GetValue()
			case "result":
				result = l.GetValue()
			}
		}
		n := uint64(pb.GetCounter().GetValue())
		switch result {
		case "success":
			peer(domain).Success += n
		case "failure":
			peer(domain).Failure += n
		case "refused":
			peer(domain).Refused += n
		}
	}

	k := f.ranker
	k.mu.Lock()
	now := k.now()
	for d := range k.failures {
		if times := k.prune(d, now); len(times) > 0 {
			p := peer(d)
			p.RecentFailures += len(times)
			last := times[len(times)-1].UTC()
			if p.LastFailure == nil || last.After(*p.LastFailure) {
				p.LastFailure = &last
			}
		}
	}
	k.mu.Unlock()

	out := make([]peerStatus, 0, len(byDomain))
	for _, p := range byDomain {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b peerStatus) int {
		return cmp.Or(cmp.Compare(b.RecentFailures, a.RecentFailures), strings.Compare(a.Domain, b.Domain))
	})
	return out
}
