package relay

import (
	"context"
	"errors"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// Messages of the error envelopes the relay sends (PROTOCOL.md §4). The
// first four are the reference relay's wording.
const (
	msgWrongSource   = "message wrong source"
	msgUnknownTwin   = "unknown twin destination"
	msgOffline       = "destination offline"
	msgRateLimited   = "exceeded rate limits"
	msgDenied        = "message denied by routing rules"
	msgQueueFull     = "destination queue is full"
	msgStoreFailed   = "failed to queue message"
	msgLookupFailed  = "failed to look up destination twin"
	msgUndeliverable = "failed to deliver message to destination relay"
	msgFedQueueFull  = "federation queue is full"
	msgFuture        = "envelope deadline too far in the future"
	msgStoreFull     = "relay store is full"
	msgNoTwin        = "destination twin 0 is not a twin"
)

// handleFrame routes one binary message read from session s. b is owned by
// the relay from now on; fl is the reader's flusher (nil in tests). This
// is the hot path: it reads the routing fields in place and decodes
// nothing else.
func (r *Relay) handleFrame(s *session, b []byte, fl *flusher) {
	start := time.Now()
	r.counters.msgsIn.Add(1)
	r.counters.bytesIn.Add(uint64(len(b)))
	s.msgsIn.Add(1)
	s.bytesIn.Add(uint64(len(b)))
	if len(b) > r.opts.MaxEnvelopeSize {
		r.counters.drop(dropTooBig)
		return
	}
	var rt envelope.Routing
	if err := envelope.ReadRouting(b, &rt); err != nil {
		r.counters.drop(dropMalformed)
		s.log.Debug("malformed envelope", "err", err)
		return
	}
	now := start
	if !r.realClock {
		now = r.opts.Now()
	}
	if r.limiter != nil && !r.allowRate(s.key.Twin, len(b), now) {
		r.counters.drop(dropRateLimited)
		r.replyError(s, &rt, envelope.CodeRateLimited, msgRateLimited, now)
		return
	}
	if rt.Kind == envelope.KindPing {
		s.pingsIn.Add(1)
		r.pong(s, &rt, now)
		return
	}
	if rt.Source.Twin != s.key.Twin || string(rt.Source.Session) != s.key.SID {
		r.counters.drop(dropWrongSource)
		r.replyError(s, &rt, envelope.CodeDenied, msgWrongSource, now)
		return
	}
	if rt.TTL(now) <= 0 {
		r.counters.drop(dropExpired)
		return
	}
	if rt.Destination.Twin == 0 {
		// The relay's own address: nothing to look up or deliver.
		r.counters.drop(dropInvalidDest)
		r.replyError(s, &rt, envelope.CodeNotFound, msgNoTwin, now)
		return
	}
	if deadlineTooFar(deadline(&rt), now) {
		r.counters.drop(dropFuture)
		r.replyError(s, &rt, envelope.CodeMalformed, msgFuture, now)
		return
	}
	if p := r.policy.Load(); !p.allows(&rt) {
		r.counters.drop(dropDenied)
		r.replyError(s, &rt, envelope.CodeDenied, msgDenied, now)
		return
	}
	m := Message{Data: b, Deadline: deadline(&rt)}
	if res, code, msg := r.route(s.ctx, &rt, m, fl); msg != "" {
		r.replyError(s, &rt, code, msg, now)
	} else {
		r.counters.routed[res].Add(1)
		s.routedIn.Add(1)
	}
	r.metrics.latency.Observe(time.Since(start).Seconds())
}

func deadline(rt *envelope.Routing) time.Time {
	return time.Unix(int64(rt.Timestamp+rt.Expiration), 0)
}

// deadlineTooFar reports whether dl lies beyond now + envelope.MaxTTL +
// maxClockSkew. No peer stamps such a deadline (they clamp the TTL), and
// an envelope that claims one would hold store space, replay memory and a
// caller's hopes for as long as it says. Every path that takes envelopes
// in (WebSocket and federation) refuses them with this one check.
func deadlineTooFar(dl, now time.Time) bool {
	return dl.After(now.Add(envelope.MaxTTL*time.Second + maxClockSkew))
}

// route delivers m to its destination: a live session here, the store when
// the twin belongs here, or federation. It returns where the envelope went,
// or the code and message of the error to answer with (the drop is counted
// here).
func (r *Relay) route(ctx context.Context, rt *envelope.Routing, m Message, fl *flusher) (routeResult, uint32, string) {
	dst := rt.Destination
	if len(dst.Session) == 1 && dst.Session[0] == '*' {
		return r.routeBroadcast(ctx, rt, m)
	}
	if s := r.lookupRaw(dst.Twin, dst.Session); s != nil {
		res, err := s.deliverFrom(m, fl)
		if err != nil {
			return r.storeError(err)
		}
		return res, 0, ""
	}
	if r.cl != nil {
		res, ok, err := r.cl.deliver(SessionKey{Twin: dst.Twin, SID: string(dst.Session)}, m)
		if err != nil {
			return r.storeError(err)
		}
		if ok {
			return res, 0, ""
		}
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	twin, err := r.opts.Directory.Twin(lctx, dst.Twin)
	cancel()
	switch {
	case errors.Is(err, registrar.ErrNotFound):
		r.counters.drop(dropUnknownTwin)
		return 0, envelope.CodeNotFound, msgUnknownTwin
	case err != nil:
		r.counters.drop(dropLookup)
		r.log.Warn("registrar lookup failed", "twin", dst.Twin, "err", err)
		return 0, envelope.CodeInternal, msgLookupFailed
	}
	if r.isOurs(twin.Relays) {
		if rt.FailFast() {
			r.counters.drop(dropOffline)
			return 0, envelope.CodeOffline, msgOffline
		}
		res, err := r.storeFor(SessionKey{Twin: dst.Twin, SID: string(dst.Session)}, m)
		if err != nil {
			return r.storeError(err)
		}
		return res, 0, ""
	}
	if len(twin.Relays) == 0 {
		r.counters.drop(dropOffline)
		return 0, envelope.CodeOffline, msgOffline
	}
	r.domainCheck.federating(twin.Relays) // domains.go: is it ourselves?
	return r.federate(rt, m, twin.Relays)
}

func (r *Relay) storeError(err error) (routeResult, uint32, string) {
	switch {
	case errors.Is(err, ErrStoreFull):
		r.counters.drop(dropStoreFull)
		return 0, envelope.CodeOffline, msgStoreFull
	case errors.Is(err, ErrTwinQueueFull):
		r.counters.drop(dropTwinQueueFull)
		return 0, envelope.CodeOffline, msgQueueFull
	}
	if errors.Is(err, ErrQueueFull) {
		r.counters.drop(dropQueueFull)
		return 0, envelope.CodeOffline, msgQueueFull
	}
	r.counters.drop(dropStoreError)
	r.log.Error("store push failed", "err", err)
	return 0, envelope.CodeInternal, msgStoreFailed
}

// relayAddress is the source of what the relay itself sends: twin 0.
func relayAddress() *envelope.Address { return &envelope.Address{} }

// replyError answers a request from session s with an unsigned error
// envelope: same uid, destination the session, source twin 0. Nothing is
// answered to other kinds of message.
func (r *Relay) replyError(s *session, rt *envelope.Routing, code uint32, msg string, now time.Time) {
	if rt.Kind != envelope.KindRequest {
		return
	}
	e := envelope.NewError(string(rt.UID), code, msg, envelope.DefaultTTL)
	r.sendOwn(s.key, e, now)
	r.counters.errorsSent.Add(1)
}

// pong answers an app-level ping with a pong to the session.
func (r *Relay) pong(s *session, rt *envelope.Routing, now time.Time) {
	e := envelope.NewPong(string(rt.UID), envelope.DefaultTTL)
	r.sendOwn(s.key, e, now)
	r.counters.pongs.Add(1)
}

// sendOwn stamps and delivers an envelope the relay itself produced to a
// local session (live or stored).
func (r *Relay) sendOwn(to SessionKey, e *envelope.Envelope, now time.Time) {
	e.Source = relayAddress()
	e.Destination = envelope.NewAddress(to.Twin, to.SID)
	e.Stamp(now)
	b, err := envelope.Marshal(e)
	if err != nil {
		r.log.Error("marshal relay envelope", "err", err)
		return
	}
	if _, err := r.deliverLocal(to, Message{Data: b, Deadline: e.Deadline()}); err != nil {
		r.log.Warn("relay envelope not delivered", "to", to.String(), "err", err)
	}
}
