package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rmb-go/rmb/internal/wsframe"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
)

// tokenLifetime is the validity of the JWT presented when connecting.
const tokenLifetime = time.Minute

// errUndeliverable means no relay took the envelope before its deadline.
var errUndeliverable = errors.New("no relay connection accepted the envelope before its deadline")

// relayConn is the peer's connection to one relay. run owns the
// connection's life; mu guards conn so senders can pick it up.
type relayConn struct {
	p      *Peer
	url    string
	domain string
	log    *slog.Logger

	mu   sync.Mutex
	conn *wsConn // nil while disconnected
}

// wsConn is one live WebSocket connection. Envelopes are written in
// batches (sends): the sender that finds the connection idle writes at
// once, envelopes sent meanwhile are written together by the next one,
// and a batch is flushed to the network in one write.
type wsConn struct {
	c     *wsframe.Conn
	sends combiner[*sendOp]
}

// sendOp is one envelope to write; writeBatch sets err.
type sendOp struct {
	ctx context.Context
	b   []byte
	err error
}

func (r *relayConn) current() *wsConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn
}

func (r *relayConn) setConn(c *wsConn) {
	r.mu.Lock()
	r.conn = c
	r.mu.Unlock()
	up := 0.0
	if c != nil {
		up = 1
	}
	r.p.metrics.relayUp.WithLabelValues(r.url).Set(up)
	r.p.notifyState()
}

// run keeps the connection up until ctx is done, reconnecting with
// jittered exponential backoff.
func (r *relayConn) run(ctx context.Context) {
	backoff := r.p.opts.MinBackoff
	var lastRefusal string
	for ctx.Err() == nil {
		start := time.Now()
		connected, err := r.session(ctx)
		if ctx.Err() != nil {
			return
		}
		switch why := refusal(err); {
		case why != "":
			// Retrying soon will not help: say so loudly, once per
			// change of reason, and retry at the slowest pace.
			backoff = r.p.opts.MaxBackoff
			if why != lastRefusal {
				r.log.Error(why, "err", err, "retry_every", backoff)
			} else {
				r.log.Debug(why, "err", err, "retry_every", backoff)
			}
			lastRefusal = why
		case connected:
			lastRefusal = ""
			r.log.Warn("relay connection lost", "err", err, "up_for", time.Since(start).Round(time.Millisecond))
			if time.Since(start) > r.p.opts.MaxBackoff {
				backoff = r.p.opts.MinBackoff
			}
		default:
			lastRefusal = ""
			r.log.Warn("relay connection failed", "err", err, "retry_in", backoff)
		}
		// Full jitter in [backoff/2, backoff].
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		backoff = min(backoff*2, r.p.opts.MaxBackoff)
	}
}

// session dials, then reads until the connection breaks. connected tells
// whether the dial succeeded.
func (r *relayConn) session(ctx context.Context) (connected bool, err error) {
	p := r.p
	token, err := identity.NewToken(p.id, p.Twin(), "", time.Now(), tokenLifetime)
	if err != nil {
		return false, err
	}
	u := r.url
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	// Pongs reach the pinger through this channel.
	pong := make(chan struct{}, 1)
	opts := &wsframe.Options{
		ReadLimit:    envelope.DefaultMaxSize + 1024,
		WriteTimeout: p.opts.WriteTimeout,
		OnPong: func() {
			select {
			case pong <- struct{}{}:
			default:
			}
		},
	}
	dctx, cancel := context.WithTimeout(ctx, p.opts.WriteTimeout)
	c, resp, err := dial(dctx, p.opts.Transport, u+"?"+token, opts)
	cancel()
	if err != nil {
		p.metrics.relayDials.WithLabelValues(r.url, "error").Inc()
		// A failed handshake quotes the URL, and the token in it is a
		// credential for its lifetime: keep it out of the logs.
		err = redactToken(err, token)
		if resp != nil {
			return false, &dialStatusError{url: r.url, status: resp.StatusCode, err: err}
		}
		return false, fmt.Errorf("dial %s: %w", r.url, err)
	}
	p.metrics.relayDials.WithLabelValues(r.url, "ok").Inc()
	sctx, scancel := context.WithCancel(ctx)
	wc := &wsConn{c: c}
	// Closing the connection is what ends a blocked read or write.
	stop := context.AfterFunc(sctx, func() { c.CloseNow() })
	defer func() {
		stop()
		scancel()
		c.CloseNow()
		r.setConn(nil)
		p.connectionLost()
	}()
	r.setConn(wc)
	r.log.Info("relay connected", "twin", p.Twin())
	go r.pinger(sctx, c, pong)
	for {
		op, b, err := c.ReadMessage(nil)
		if err != nil {
			return true, err
		}
		if op != wsframe.OpBinary {
			continue
		}
		if err := p.receive(ctx, sctx, b, r); err != nil {
			return true, err
		}
	}
}

// pinger closes c when a WebSocket ping is not answered in time. Pongs
// arrive on pong.
func (r *relayConn) pinger(ctx context.Context, c *wsframe.Conn, pong <-chan struct{}) {
	t := time.NewTicker(r.p.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select { // a pong that came late for the last ping
		case <-pong:
		default:
		}
		err := c.Ping()
		if err == nil {
			select {
			case <-pong:
				continue
			case <-ctx.Done():
				return
			case <-time.After(r.p.opts.PingTimeout):
				err = fmt.Errorf("no pong within %s", r.p.opts.PingTimeout)
			}
		}
		if ctx.Err() == nil {
			r.log.Warn("relay ping failed; closing connection", "err", err)
			c.CloseNow()
		}
		return
	}
}

// errNotConnected means the relay connection is down or went down before
// the envelope was written.
var errNotConnected = errors.New("not connected")

// write sends one serialized envelope if the connection is up and waits
// until it was written, together with the envelopes other goroutines
// send at the same time. A failed write closes the connection so run
// reconnects.
func (r *relayConn) write(ctx context.Context, b []byte) error {
	wc := r.current()
	if wc == nil {
		return errNotConnected
	}
	op := &sendOp{ctx: ctx, b: b}
	wc.sends.do(op, func(batch []*sendOp) { r.writeBatch(wc, batch) })
	return op.err
}

// writeBatch writes the envelopes of batch and flushes them together, in
// one write unless they are many. wsframe bounds the write with
// WriteTimeout; the session's end closes the connection.
func (r *relayConn) writeBatch(wc *wsConn, batch []*sendOp) {
	var err error
	for _, op := range batch {
		if op.err = op.ctx.Err(); op.err != nil {
			continue // the sender gave up
		}
		if err = wc.c.WriteMessage(wsframe.OpBinary, op.b); err != nil {
			break
		}
	}
	if err == nil {
		err = wc.c.Flush()
	}
	if err != nil {
		// The senders try another relay; one that was written after all
		// is suppressed as a duplicate by the receiver.
		for _, op := range batch {
			if op.err == nil {
				op.err = err
			}
		}
		wc.c.CloseNow()
	}
}

// send writes b on a healthy relay connection, trying the others when a
// write fails and waiting for a connection while none is up, until
// deadline.
func (p *Peer) send(ctx context.Context, b []byte, deadline time.Time) error {
	n := len(p.relays)
	for {
		changed := p.stateChanged()
		start := int(p.rr.Add(1))
		for i := range n {
			r := p.relays[(start+i)%n]
			if r.current() == nil {
				continue
			}
			if err := r.write(ctx, b); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.log.Warn("relay write failed; trying another relay", "err", err)
				continue
			}
			return nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return errUndeliverable
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
			return errUndeliverable
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// connectionLost asks the resender to send unanswered requests again: the
// lost relay may have dropped them or their answers.
func (p *Peer) connectionLost() {
	select {
	case p.resendReq <- struct{}{}:
	default:
	}
}

// dial opens a WebSocket connection to u. The opening handshake is an
// HTTP request through tr (nil: http.DefaultTransport, so the proxy
// settings of the environment and the system's TLS roots apply); the
// frames are wsframe's. On a refused handshake the response comes with
// the error.
func dial(ctx context.Context, tr *http.Transport, u string, opts *wsframe.Options) (*wsframe.Conn, *http.Response, error) {
	if tr == nil {
		var ok bool
		if tr, ok = http.DefaultTransport.(*http.Transport); !ok {
			tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
		}
	}
	return wsframe.DialHTTP(ctx, tr, u, opts)
}

// redactToken replaces token in the text of err.
func redactToken(err error, token string) error {
	if !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "<token>"))
}

// dialStatusError is a handshake the relay answered with an HTTP status.
type dialStatusError struct {
	url    string
	status int
	err    error
}

func (e *dialStatusError) Error() string {
	return fmt.Sprintf("dial %s: HTTP %d: %v", e.url, e.status, e.err)
}
func (e *dialStatusError) Unwrap() error { return e.err }

// closeReplaced is the close code of a relay whose session of this twin
// and session id was taken by a newer connection.
const closeReplaced = wsframe.StatusCode(4000)

// refusal explains an error after which reconnecting at once would not
// help, or returns "".
func refusal(err error) string {
	var se *dialStatusError
	if errors.As(err, &se) {
		switch se.status {
		case http.StatusForbidden:
			return "the relay refuses this twin (HTTP 403: not on its allow list); ask its operator to allow the twin"
		case http.StatusUnauthorized:
			return "the relay refuses this twin's token (HTTP 401): the twin or its key is not what the relay's registrar knows, or this machine's clock is off"
		case http.StatusTooManyRequests:
			return "the relay refuses more sessions of this twin or from this address (HTTP 429)"
		}
	}
	if wsframe.CloseStatus(err) == closeReplaced {
		return "another connection of this twin and session took over at the relay: two peers run with the same key (give each its own key, or stop one)"
	}
	return ""
}
