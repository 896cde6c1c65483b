package peer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// The local HTTP API: the JSON of the Redis API (PROTOCOL.md §6) over
// HTTP, on a UNIX socket or a loopback TCP port, for local programs
// without Redis (busrt serves its local clients on a UNIX socket).
//
//	POST /call            body: an outgoing request (ret not needed);
//	                      answers a JSON array of incoming responses, one
//	                      per destination, once all came or the TTL ran out
//	GET  /serve?cmd=C[&wait=S]
//	                      long poll: 200 with the next incoming request for
//	                      C, or 204 after S seconds (default and at most
//	                      MaxServeWait) without one
//	POST /reply           body: an outgoing response to a request /serve
//	                      gave; 204, or 404 when no request waits for it
//
// Errors are {"error":{"code":N,"message":"..."}} with an HTTP status.
// There is no authentication: whoever can open the socket (its mode is
// 0600) or the loopback port acts as the twin. ListenHTTP refuses any
// other address.
//
// A command polled through /serve is served in-process (Peer.Handle)
// until no /serve asked for it for ServeIdle: requests for it do not go to
// Redis meanwhile. A request waits for a /serve at most until its
// deadline (then 408); at most MaxQueued wait at a time (then 429). A
// request /serve handed out and that gets no /reply is answered 408 at
// its deadline: this delivery is at most once (the Redis API's
// acknowledged delivery, ack.go, is at least once).
//
// Topics (publish, subscribe, unsubscribe, events) are in httptopics.go.
// Routes are a table: another endpoint is one Handle call with a handler
// that uses ReadJSON, WriteJSON and WriteError and, when it waits, Wait.

// HTTPOptions tune the HTTP API; zero values take the defaults.
type HTTPOptions struct {
	// MaxBodyBytes bounds a request body. Default: room for a payload of
	// envelope.DefaultMaxSize in base64 plus the JSON around it.
	MaxBodyBytes int64
	// MaxWaiters bounds the requests that wait (/call, /serve) at a
	// time; more are refused with 503. Default 1024.
	MaxWaiters int
	// MaxServeWait bounds the wait of one /serve. Default 30s.
	MaxServeWait time.Duration
	// MaxQueued bounds the incoming requests waiting for a /serve, all
	// commands together. Default 1024.
	MaxQueued int
	// ServeIdle is how long a command stays served through HTTP after its
	// last /serve. Default 30s.
	ServeIdle time.Duration
	// WriteTimeout bounds the writing of a response that does not wait.
	// Default 30s.
	WriteTimeout time.Duration
	// MaxSubscriptions bounds the topic subscriptions the API holds for
	// /events. Default 64.
	MaxSubscriptions int
	// SubscriptionIdle is how long a held subscription lasts after its
	// last /events. Default 5m.
	SubscriptionIdle time.Duration
}

func (o *HTTPOptions) withDefaults() HTTPOptions {
	var c HTTPOptions
	if o != nil {
		c = *o
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = int64(envelope.DefaultMaxSize)*4/3 + 64<<10
	}
	if c.MaxWaiters <= 0 {
		c.MaxWaiters = 1024
	}
	if c.MaxServeWait <= 0 {
		c.MaxServeWait = 30 * time.Second
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 1024
	}
	if c.ServeIdle <= 0 {
		c.ServeIdle = 30 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.MaxSubscriptions <= 0 {
		c.MaxSubscriptions = 64
	}
	if c.SubscriptionIdle <= 0 {
		c.SubscriptionIdle = 5 * time.Minute
	}
	return c
}

// HTTPAPI is the local HTTP API of a peer; it is an http.Handler.
type HTTPAPI struct {
	p       *Peer
	o       HTTPOptions
	mux     *http.ServeMux
	waiters chan struct{}
	refused *prometheus.CounterVec // by reason

	mu       sync.Mutex
	cmds     map[string]*httpCmd // commands served through /serve
	inflight map[string]*httpReq // handed out by /serve, by ref and source
	queued   int
	janitor  bool

	subs        httpSubs // topic subscriptions held for /events (httptopics.go)
	subsJanitor bool     // guarded by subs.mu
}

type httpCmd struct {
	reqs     chan *httpReq
	lastPoll time.Time
}

type httpReq struct {
	ctx    context.Context // ends at the request's deadline
	msg    []byte          // IncomingRequest JSON
	key    string
	answer chan *redisapi.OutgoingResponse // buffered 1
}

// Reasons of rmb_peer_http_refused_total.
const (
	httpRefusedWaiters = "waiters"
	httpRefusedQueued  = "queued"
	httpRefusedBody    = "body_too_big"
	httpRefusedBadJSON = "bad_request"
	httpRefusedSubs    = "subscriptions"
)

// NewHTTPAPI returns the local HTTP API of p. Serve it with
// HTTPServer on a listener from ListenHTTP. Its metric is registered on
// p's registry, so make one per peer.
func NewHTTPAPI(p *Peer, o *HTTPOptions) *HTTPAPI {
	a := &HTTPAPI{
		p:        p,
		o:        o.withDefaults(),
		mux:      http.NewServeMux(),
		cmds:     make(map[string]*httpCmd),
		inflight: make(map[string]*httpReq),
		subs:     httpSubs{subs: make(map[string]*httpSub)},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rmb_peer_http_refused_total",
			Help: "Requests of the local HTTP API refused, by reason: waiters (too many waiting), queued (too many requests waiting for a /serve), body_too_big, bad_request, subscriptions (too many held for /events).",
		}, []string{"reason"}),
	}
	a.waiters = make(chan struct{}, a.o.MaxWaiters)
	p.metrics.reg.MustRegister(a.refused)
	for _, r := range []struct {
		pattern string
		h       http.HandlerFunc
	}{
		{"POST /call", a.call},
		{"GET /serve", a.serve},
		{"POST /reply", a.reply},
		{"POST /topics", a.topics},
		{"GET /events", a.events},
	} {
		a.Handle(r.pattern, r.h)
	}
	return a
}

// Handle adds a route (a http.ServeMux pattern such as "POST /publish").
func (a *HTTPAPI) Handle(pattern string, h http.HandlerFunc) { a.mux.HandleFunc(pattern, h) }

// ServeHTTP bounds the body and the write time and routes the request.
func (a *HTTPAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(a.o.WriteTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, a.o.MaxBodyBytes)
	a.mux.ServeHTTP(w, r)
}

// HTTPServer returns a server for a with bounded header, read and idle
// times; handlers that wait extend their own write deadlines (Wait).
func (a *HTTPAPI) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
}

// Wait takes a waiter slot for a handler that waits until deadline and
// extends its write deadline to then. It returns false, having answered
// 503, when MaxWaiters are waiting; otherwise call release when done.
func (a *HTTPAPI) Wait(w http.ResponseWriter, deadline time.Time) (release func(), ok bool) {
	select {
	case a.waiters <- struct{}{}:
	default:
		a.refused.WithLabelValues(httpRefusedWaiters).Inc()
		WriteError(w, http.StatusServiceUnavailable, "too many requests waiting; try again later")
		return nil, false
	}
	http.NewResponseController(w).SetWriteDeadline(deadline.Add(5 * time.Second))
	return func() { <-a.waiters }, true
}

// ReadJSON reads the body into v. On failure it has answered 413 or 400
// and returns false.
func (a *HTTPAPI) ReadJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		a.refused.WithLabelValues(httpRefusedBody).Inc()
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", tooBig.Limit))
		return false
	case err != nil:
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, "cannot read body: "+err.Error())
		return false
	}
	if err := json.Unmarshal(b, v); err != nil {
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, "body is not the JSON expected: "+err.Error())
		return false
	}
	return true
}

// WriteJSON answers v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// WriteError answers {"error":{"code":status,"message":msg}}.
func WriteError(w http.ResponseWriter, status int, msg string) {
	WriteJSON(w, status, map[string]any{"error": JSONError{Code: uint32(status), Message: msg}})
}

// call is POST /call.
func (a *HTTPAPI) call(w http.ResponseWriter, r *http.Request) {
	var req OutgoingRequest
	if !a.ReadJSON(w, r, &req) {
		return
	}
	payload, err := base64.StdEncoding.DecodeString(req.Data)
	var msg string
	switch {
	case err != nil:
		msg = "dat is not standard base64"
	case req.Command == "":
		msg = "missing cmd"
	case len(req.Destinations) == 0:
		msg = "missing dst"
	case len(req.Destinations) > MaxDestinations:
		msg = fmt.Sprintf("%d destinations, at most %d", len(req.Destinations), MaxDestinations)
	case req.Expiration < 0:
		msg = "exp is negative"
	}
	for _, d := range req.Destinations {
		if d == 0 {
			msg = "destination twin 0"
		}
	}
	if msg != "" {
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, msg)
		return
	}
	ttl := time.Duration(envelope.ClampTTL(uint64(req.Expiration))) * time.Second
	release, ok := a.Wait(w, time.Now().Add(ttl))
	if !ok {
		return
	}
	defer release()
	opts := &CallOptions{TTL: ttl, Schema: req.Schema}
	if req.Tags != nil {
		opts.Tags = *req.Tags
	}
	if req.Session != nil {
		opts.Session = *req.Session
	}
	rs, err := a.p.Call(r.Context(), req.Destinations, req.Command, payload, opts)
	if err != nil && len(rs) == 0 {
		WriteError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	out := make([]IncomingResponse, 0, len(rs))
	for _, resp := range rs {
		m := IncomingResponse{Version: 1, Ref: req.Ref, Data: redisapi.EncodeData(resp.Data),
			Source: address{twin: resp.Source, sid: resp.Session}.String(), Schema: resp.Schema, Now: resp.Timestamp.Unix()}
		if resp.Err != nil {
			m.Error = &JSONError{Code: resp.Err.Code, Message: resp.Err.Message}
		}
		out = append(out, m)
	}
	WriteJSON(w, http.StatusOK, out)
}

// serve is GET /serve?cmd=C&wait=S.
func (a *HTTPAPI) serve(w http.ResponseWriter, r *http.Request) {
	cmd := r.URL.Query().Get("cmd")
	if err := CheckCommand(cmd); err != nil || IsBuiltin(cmd) {
		if err == nil {
			err = fmt.Errorf("%q is answered by the peer itself", cmd)
		}
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, "cmd: "+err.Error())
		return
	}
	wait := a.o.MaxServeWait
	if s := r.URL.Query().Get("wait"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
			WriteError(w, http.StatusBadRequest, "wait: want whole seconds")
			return
		}
		wait = min(wait, time.Duration(n)*time.Second)
	}
	release, ok := a.Wait(w, time.Now().Add(wait))
	if !ok {
		return
	}
	defer release()
	c := a.served(cmd)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case hr := <-c.reqs:
			a.mu.Lock()
			a.queued--
			if hr.ctx.Err() != nil {
				a.mu.Unlock()
				continue // answered 408 already
			}
			a.inflight[hr.key] = hr
			a.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Write(hr.msg)
			return
		case <-timer.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// served registers cmd as served through HTTP and notes the poll.
func (a *HTTPAPI) served(cmd string) *httpCmd {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cmds[cmd]
	if c == nil {
		c = &httpCmd{reqs: make(chan *httpReq, a.o.MaxQueued)}
		a.cmds[cmd] = c
		a.p.Handle(cmd, func(ctx context.Context, req *Request) ([]byte, error) { return a.handle(ctx, c, req) })
		if !a.janitor {
			a.janitor = true
			go a.sweep()
		}
	}
	c.lastPoll = time.Now()
	return c
}

// sweep stops serving through HTTP the commands nobody polled for
// ServeIdle, until the peer stops.
func (a *HTTPAPI) sweep() {
	t := time.NewTicker(min(a.o.ServeIdle/2, 5*time.Second))
	defer t.Stop()
	for {
		select {
		case <-a.p.done:
			return
		case <-t.C:
		}
		a.mu.Lock()
		for cmd, c := range a.cmds {
			if time.Since(c.lastPoll) > a.o.ServeIdle && len(c.reqs) == 0 {
				a.p.Handle(cmd, nil)
				delete(a.cmds, cmd)
			}
		}
		a.mu.Unlock()
	}
}

// handle is the in-process handler of a command served through HTTP: it
// queues the request for a /serve and waits for its /reply.
func (a *HTTPAPI) handle(ctx context.Context, c *httpCmd, req *Request) ([]byte, error) {
	src := address{twin: req.Source, sid: req.Session}
	msg := IncomingRequest{Version: 1, Ref: req.UID, Source: src.String(), Command: req.Command,
		Expiration: uint64(max(time.Until(req.Deadline)/time.Second, 1)), Data: redisapi.EncodeData(req.Data),
		ReplyTo: "/reply", Schema: req.Schema, Now: time.Now().Unix()}
	if req.Tags != "" {
		msg.Tags = &req.Tags
	}
	hr := &httpReq{ctx: ctx, msg: msg.AppendJSON(nil), key: req.UID + "|" + src.String(),
		answer: make(chan *redisapi.OutgoingResponse, 1)}
	a.mu.Lock()
	if a.queued >= a.o.MaxQueued {
		a.mu.Unlock()
		a.refused.WithLabelValues(httpRefusedQueued).Inc()
		return nil, &Error{Code: envelope.CodeRateLimited, Message: "too many requests waiting for the local service"}
	}
	select {
	case c.reqs <- hr:
		a.queued++
	default:
		a.mu.Unlock()
		a.refused.WithLabelValues(httpRefusedQueued).Inc()
		return nil, &Error{Code: envelope.CodeRateLimited, Message: "too many requests waiting for the local service"}
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.inflight, hr.key)
		a.mu.Unlock()
	}()
	select {
	case resp := <-hr.answer:
		if resp.Error != nil {
			return nil, &Error{Code: resp.Error.Code, Message: resp.Error.Message}
		}
		return resp.Payload()
	case <-ctx.Done():
		return nil, &Error{Code: envelope.CodeTimeout, Message: "the local service did not answer before the deadline"}
	}
}

// reply is POST /reply.
func (a *HTTPAPI) reply(w http.ResponseWriter, r *http.Request) {
	var raw json.RawMessage
	if !a.ReadJSON(w, r, &raw) {
		return
	}
	resp, err := redisapi.DecodeOutgoingResponse(raw)
	if err != nil {
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	dst, _ := parseAddress(resp.Destination)
	key := resp.Ref + "|" + dst.String()
	a.mu.Lock()
	hr := a.inflight[key]
	delete(a.inflight, key)
	a.mu.Unlock()
	if hr == nil {
		WriteError(w, http.StatusNotFound, "no request waits for this ref and dst (answered, expired or unknown)")
		return
	}
	hr.answer <- resp
	w.WriteHeader(http.StatusNoContent)
}

// CheckHTTPAddress reports whether ListenHTTP accepts addr, without
// listening.
func CheckHTTPAddress(addr string) error {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" || !strings.HasPrefix(path, "/") {
			return fmt.Errorf("http: bad address %q: want unix:///absolute/path", addr)
		}
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("http: bad address %q: want unix:///path or 127.0.0.1:PORT", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("http: refusing %q: the HTTP API has no authentication, so it listens only on a unix socket or a loopback address (127.0.0.1, [::1], localhost)", addr)
	}
	return nil
}

// ListenHTTP listens for the HTTP API on addr: unix:///path (a socket of
// mode 0600; a stale socket file nobody listens on is replaced) or a
// loopback host:port (127.0.0.1, [::1], localhost). Any other address is
// refused (CheckHTTPAddress): the API has no authentication.
func ListenHTTP(addr string) (net.Listener, error) {
	if err := CheckHTTPAddress(addr); err != nil {
		return nil, err
	}
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("http: %s is in use by another process", path)
			}
			os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("http: %w", err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("http: %w", err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	return ln, nil
}
