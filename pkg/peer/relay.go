package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

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
	conn *websocket.Conn // nil while disconnected
}

func (r *relayConn) current() *websocket.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn
}

func (r *relayConn) setConn(c *websocket.Conn) {
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
	for ctx.Err() == nil {
		start := time.Now()
		connected, err := r.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			r.log.Warn("relay connection lost", "err", err, "up_for", time.Since(start).Round(time.Millisecond))
			if time.Since(start) > r.p.opts.MaxBackoff {
				backoff = r.p.opts.MinBackoff
			}
		} else {
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
	dctx, cancel := context.WithTimeout(ctx, p.opts.WriteTimeout)
	c, resp, err := websocket.Dial(dctx, u+"?"+token, nil)
	cancel()
	if err != nil {
		p.metrics.relayDials.WithLabelValues(r.url, "error").Inc()
		if resp != nil {
			return false, fmt.Errorf("dial %s: HTTP %d: %w", r.url, resp.StatusCode, err)
		}
		return false, fmt.Errorf("dial %s: %w", r.url, err)
	}
	p.metrics.relayDials.WithLabelValues(r.url, "ok").Inc()
	c.SetReadLimit(envelope.DefaultMaxSize + 1024)
	sctx, scancel := context.WithCancel(ctx)
	defer func() {
		scancel()
		c.CloseNow()
		r.setConn(nil)
		p.connectionLost()
	}()
	r.setConn(c)
	r.log.Info("relay connected", "twin", p.Twin())
	go r.pinger(sctx, c)
	for {
		typ, b, err := c.Read(sctx)
		if err != nil {
			return true, err
		}
		if typ != websocket.MessageBinary {
			continue
		}
		select {
		case p.inbound <- inboundMsg{data: b, relay: r}:
		case <-sctx.Done():
			return true, sctx.Err()
		}
	}
}

// pinger closes c when a WebSocket ping is not answered in time.
func (r *relayConn) pinger(ctx context.Context, c *websocket.Conn) {
	t := time.NewTicker(r.p.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, r.p.opts.PingTimeout)
		err := c.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.log.Warn("relay ping failed; closing connection", "err", err)
			c.CloseNow()
			return
		}
	}
}

// write sends one serialized envelope if the connection is up. A failed
// write closes the connection so run reconnects.
func (r *relayConn) write(ctx context.Context, b []byte) error {
	c := r.current()
	if c == nil {
		return errors.New("not connected")
	}
	wctx, cancel := context.WithTimeout(ctx, r.p.opts.WriteTimeout)
	defer cancel()
	if err := c.Write(wctx, websocket.MessageBinary, b); err != nil {
		c.CloseNow()
		return err
	}
	return nil
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
