package peer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// inboundMsg is one binary WebSocket message from a relay.
type inboundMsg struct {
	data  []byte
	relay *relayConn
}

// seenKey identifies an envelope for duplicate suppression: the first
// 128 bits of SHA-256 over its kind, source twin, uid and source session.
//
// A busy peer remembers hundreds of thousands of envelopes (each until
// its deadline plus seenGrace). Keys and values without pointers keep
// that map out of the garbage collector's marking, and keep a uid from
// pinning the buffer of the whole envelope it was decoded from. Two
// envelopes share a key only through a collision of truncated SHA-256:
// one sender cannot make its key equal another sender's (a second
// preimage) and has no use for a collision between two keys of its own.
type seenKey [16]byte

func newSeenKey(uid string, src address, kind envelope.Kind) seenKey {
	var buf [128]byte
	b := append(buf[:0], byte(kind))
	b = binary.BigEndian.AppendUint32(b, src.twin)
	b = binary.AppendUvarint(b, uint64(len(uid)))
	b = append(b, uid...)
	b = append(b, src.sid...) // last: its length is what is left
	h := sha256.Sum256(b)
	return seenKey(h[:16])
}

// errorTTL is the lifetime of error answers to requests that had none
// left.
const errorTTL = 60

// maxClockSkew is how far beyond now + envelope.MaxTTL an incoming
// envelope's deadline may lie.
const maxClockSkew = time.Minute

func (p *Peer) inboundWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.inbound:
			p.handleEnvelope(ctx, m.data, false)
		}
	}
}

// receive handles an envelope read from a relay. It is called on the
// connection's reader, which handles the envelope itself when that needs
// no registrar lookup (the usual case: the sender's key is cached) and
// waits for nothing but a place in the Redis loop's queue (the request or
// answer goes on with pushAsync), and hands it to an inbound worker
// otherwise. Every hand-off to another goroutine costs a
// wait for a turn on a core; an envelope handled by its reader saves one.
//
// ctx is the peer's: what the envelope starts outlives the connection.
// sctx is the connection's: a hand-off still waiting when it ends is
// given up, and the connection's end reported.
func (p *Peer) receive(ctx, sctx context.Context, b []byte, r *relayConn) error {
	if p.handleEnvelope(ctx, b, true) {
		return nil
	}
	select {
	case p.inbound <- inboundMsg{data: b, relay: r}:
		return nil
	case <-sctx.Done():
		return sctx.Err()
	}
}

// cachedTwin is what a Registrar may offer besides Twin: a lookup that
// only reads its cache (registrar.Client.CachedTwin).
type cachedTwin interface {
	CachedTwin(id uint32) (*registrar.Twin, error)
}

// handleEnvelope verifies an incoming envelope in the order of
// docs/protocol.md §9 and dispatches it. Failed requests are answered with signed errors;
// failed answers are dropped and counted.
//
// inline means the caller is a relay connection's reader, which must not
// block: sends (error answers, rmb.version) then run on goroutines of
// their own, and an envelope whose sender is not in the registrar cache
// is left alone: handleEnvelope returns false before doing anything, for
// a worker to handle it. Otherwise it returns true.
func (p *Peer) handleEnvelope(ctx context.Context, b []byte, inline bool) bool {
	// later runs f now in a worker, and on a goroutine of its own on a
	// reader.
	later := func(f func()) {
		if inline {
			go f()
		} else {
			f()
		}
	}
	env, err := envelope.Unmarshal(b, 0)
	if err != nil {
		p.metrics.dropped.WithLabelValues(dropMalformed).Inc()
		p.log.Warn("malformed envelope from relay dropped", "err", err)
		return true
	}
	now := time.Now()
	if env.Source.GetTwin() == 0 {
		p.handleRelayMessage(ctx, env)
		return true
	}
	src := address{twin: env.Source.GetTwin(), sid: env.Source.GetConnection()}
	var twin *registrar.Twin
	if inline {
		c, ok := p.reg.(cachedTwin)
		if !ok {
			return false
		}
		if twin, err = c.CachedTwin(src.twin); errors.Is(err, registrar.ErrNotCached) {
			return false
		}
	}
	isReq := env.IsRequest()
	fail := func(reason string, code uint32, msg string) {
		p.metrics.dropped.WithLabelValues(reason).Inc()
		p.log.Debug("incoming envelope rejected", "uid", env.Uid, "src", src, "code", code, "err", msg)
		if isReq {
			later(func() { p.sendError(ctx, env.Uid, src, code, msg, env.Deadline()) })
		}
	}
	switch {
	case env.IsPing(), env.IsPong():
		return true
	case !isReq && !env.IsResponse() && !env.IsError():
		fail(dropMalformed, envelope.CodeMalformed, "envelope carries no message")
		return true
	case env.Uid == "":
		fail(dropMalformed, envelope.CodeMalformed, "envelope has no uid")
		return true
	case env.Destination.GetTwin() != p.Twin():
		p.metrics.dropped.WithLabelValues(dropUnexpected).Inc()
		p.log.Warn("envelope for another twin dropped", "uid", env.Uid, "dst", env.Destination.GetTwin())
		return true
	case env.Expired(now):
		fail(dropExpired, envelope.CodeExpired, "envelope expired")
		return true
	case env.Deadline().After(now.Add(envelope.MaxTTL*time.Second + maxClockSkew)):
		// No peer stamps such a deadline (the TTL is clamped to MaxTTL).
		// Accepted, it would pin a duplicate-filter entry, and the answer,
		// for as long as it claims.
		p.metrics.dropped.WithLabelValues(dropExpired).Inc()
		if isReq {
			later(func() {
				p.sendError(ctx, env.Uid, src, envelope.CodeExpired, "envelope deadline is too far in the future",
					now.Add(errorTTL*time.Second))
			})
		}
		return true
	}
	if !inline {
		twin, err = p.reg.Twin(ctx, src.twin)
	}
	if err != nil {
		if errors.Is(err, registrar.ErrNotFound) {
			fail(dropUnknownTwin, envelope.CodeUnknownTwin, fmt.Sprintf("unknown source twin %d", src.twin))
		} else {
			// The error names the registrar and its address: the log's,
			// not the sender's.
			p.log.Warn("cannot look up source twin", "twin", src.twin, "err", err)
			fail(dropUnknownTwin, envelope.CodeInternal, "cannot look up source twin; try again later")
		}
		return true
	}
	if err := env.Verify(twin.PublicKey); err != nil {
		fail(dropBadSignature, envelope.CodeBadSignature, "bad signature: "+err.Error())
		return true
	}
	kind := envelope.KindResponse
	switch {
	case isReq:
		kind = envelope.KindRequest
	case env.IsError():
		kind = envelope.KindError
	}
	if dup, cached := p.checkSeen(newSeenKey(env.Uid, src, kind), env.Deadline()); dup {
		p.metrics.duplicates.Inc()
		if cached != nil {
			// The caller re-sent the request: our answer may have been
			// lost with a relay.
			go p.send(ctx, cached, env.Deadline())
		}
		return true
	}
	payload := env.PayloadBytes()
	if c, ok := env.Payload.(*envelope.Envelope_Cipher); ok {
		if len(twin.E2EKey) == 0 {
			later(func() {
				p.answerFailed(ctx, env, src, dropDecrypt, envelope.CodeNoE2EKey, fmt.Sprintf("payload is encrypted but twin %d has no e2e key", src.twin))
			})
			return true
		}
		payload, err = p.e2e.Open(twin.E2EKey, c.Cipher)
		if err != nil {
			later(func() {
				p.answerFailed(ctx, env, src, dropDecrypt, envelope.CodeDecryptFailed, "cannot decrypt payload: "+err.Error())
			})
			return true
		}
	}
	switch {
	case isReq:
		p.metrics.requestsIn.Inc()
		p.handleRequest(ctx, env, src, payload, later)
	case env.IsError():
		p.complete(ctx, env.Uid, src.twin, &Response{Source: src.twin, Session: src.sid,
			Timestamp: time.Unix(int64(env.Timestamp), 0), Schema: env.GetSchema(),
			Err: errorFromEnvelope(env.GetError())})
	default:
		p.complete(ctx, env.Uid, src.twin, &Response{Source: src.twin, Session: src.sid,
			Timestamp: time.Unix(int64(env.Timestamp), 0), Schema: env.GetSchema(), Data: payload})
	}
	return true
}

// answerFailed reports a payload failure: to the sender for a request, to
// the waiting caller for an answer (the answer is authentic, so the caller
// learns why it cannot read it).
func (p *Peer) answerFailed(ctx context.Context, env *envelope.Envelope, src address, reason string, code uint32, msg string) {
	p.metrics.dropped.WithLabelValues(reason).Inc()
	if env.IsRequest() {
		p.sendError(ctx, env.Uid, src, code, msg, env.Deadline())
		return
	}
	p.complete(ctx, env.Uid, src.twin, &Response{Source: src.twin, Session: src.sid,
		Timestamp: time.Unix(int64(env.Timestamp), 0), Err: &Error{Code: code, Message: msg}})
}

// handleRelayMessage handles unsigned envelopes from the relay (source
// twin 0): errors answering our requests.
func (p *Peer) handleRelayMessage(ctx context.Context, env *envelope.Envelope) {
	if !env.IsError() {
		if !env.IsPong() {
			p.metrics.dropped.WithLabelValues(dropUnexpected).Inc()
		}
		return
	}
	p.log.Debug("relay error", "uid", env.Uid, "code", env.GetError().GetCode(), "message", env.GetError().GetMessage())
	p.complete(ctx, env.Uid, 0, &Response{Timestamp: time.Now(), Err: errorFromEnvelope(env.GetError())})
}

// checkSeen records key until expires and reports whether it was already
// there, with the cached answer if any.
//
// The answers are bounded by Options.MaxAnswerCacheBytes: an answer that
// does not fit is not kept and its request is forgotten (rememberAnswer),
// so a re-sent request is then handled again (at-least-once) instead of
// being answered from the cache; counted as answer_cache_full.
func (p *Peer) checkSeen(key seenKey, expires time.Time) (dup bool, response []byte) {
	p.seenMu.Lock()
	defer p.seenMu.Unlock()
	if _, ok := p.seen[key]; ok {
		return true, p.answers[key]
	}
	p.seen[key] = expires.UnixNano()
	// Keep entries a little past the deadline: clocks differ.
	sec := expires.Unix() + seenGrace
	p.seenSweep[sec] = append(p.seenSweep[sec], key)
	return false, nil
}

// seenGrace is how many seconds past its deadline an envelope is still
// recognized as a duplicate.
const seenGrace = 30

// rememberAnswer returns the deadline of an incoming request we saw and
// stores its signed answer (unless answer is nil).
func (p *Peer) rememberAnswer(uid string, dst address, answer []byte) (deadline time.Time, ok bool) {
	key := newSeenKey(uid, dst, envelope.KindRequest)
	p.seenMu.Lock()
	defer p.seenMu.Unlock()
	expires, ok := p.seen[key]
	if !ok {
		return time.Time{}, false
	}
	if answer != nil {
		old := int64(len(p.answers[key]))
		if p.answerBytes-old+int64(len(answer)) > p.opts.MaxAnswerCacheBytes {
			// Full: the answer is not kept, and the request is forgotten,
			// so that a re-sent one is handled again rather than left
			// unanswered.
			p.metrics.dropped.WithLabelValues(dropAnswerCache).Inc()
			delete(p.answers, key)
			delete(p.seen, key)
			p.answerBytes -= old
		} else {
			p.answers[key] = answer
			p.answerBytes += int64(len(answer)) - old
		}
	}
	return time.Unix(0, expires), true
}

// requestDeadline returns the deadline of an incoming request we saw.
func (p *Peer) requestDeadline(uid string, dst address) (time.Time, bool) {
	return p.rememberAnswer(uid, dst, nil)
}

// sweepSeen forgets the entries whose time has come. It visits the
// seconds that have passed, not every entry.
func (p *Peer) sweepSeen(now time.Time) {
	p.seenMu.Lock()
	defer p.seenMu.Unlock()
	for sec, keys := range p.seenSweep {
		if sec >= now.Unix() {
			continue
		}
		for _, k := range keys {
			delete(p.seen, k)
			p.answerBytes -= int64(len(p.answers[k]))
			delete(p.answers, k)
		}
		delete(p.seenSweep, sec)
	}
}

// handleRequest applies the policy and hands a verified request to the
// built-in command, an in-process handler or the Redis service queue.
//
// later runs what may block (handleEnvelope).
func (p *Peer) handleRequest(ctx context.Context, env *envelope.Envelope, src address, payload []byte, later func(func())) {
	cmd := env.GetRequest().GetCommand()
	deadline := env.Deadline()
	// refuse answers the request with an error and counts why.
	refuse := func(reason string, code uint32, msg string) {
		p.metrics.dropped.WithLabelValues(reason).Inc()
		later(func() { p.sendError(ctx, env.Uid, src, code, msg, deadline) })
	}
	if err := CheckCommand(cmd); err != nil {
		if errors.Is(err, ErrReservedCommand) {
			refuse(dropReserved, envelope.CodeDenied, err.Error())
		} else {
			refuse(dropBadCommand, envelope.CodeBadPayload, err.Error())
		}
		return
	}
	if p.isRet(CommandQueue(cmd), time.Now()) {
		refuse(dropReserved, envelope.CodeDenied, fmt.Sprintf("%v: %q (a local client waits on this list)", ErrReservedCommand, cmd))
		return
	}
	if p.topicRequest(ctx, env, src, cmd, payload, later) {
		return // topics_owner.go applies the policy itself
	}
	if pol := p.policy.Load(); pol != nil && !pol.Allow(src.twin, cmd) {
		later(func() {
			p.sendError(ctx, env.Uid, src, envelope.CodeDenied, fmt.Sprintf("twin %d may not call %q", src.twin, cmd), deadline)
		})
		return
	}
	if p.builtin(ctx, env.Uid, src, cmd, payload, env.GetSchema(), deadline, later) {
		return // builtins.go
	}
	if h := p.handler(cmd); h != nil {
		req := &Request{UID: env.Uid, Source: src.twin, Session: src.sid, Command: cmd,
			Data: payload, Schema: env.GetSchema(), Tags: env.GetTags(), Deadline: deadline}
		go func() {
			hctx, cancel := context.WithDeadline(ctx, deadline)
			defer cancel()
			data, err := h(hctx, req)
			var e *Error
			if err != nil && !errors.As(err, &e) {
				e = &Error{Code: envelope.CodeInternal, Message: err.Error()}
			}
			p.sendAnswer(ctx, req.UID, src, data, req.Schema, e, deadline)
		}()
		return
	}
	if p.rdb == nil {
		later(func() {
			p.sendError(ctx, env.Uid, src, envelope.CodeNotFound, fmt.Sprintf("no handler for command %q", cmd), deadline)
		})
		return
	}
	if len(p.serve) > 0 && !p.serve.match(cmd) {
		refuse(dropNotServed, envelope.CodeNotFound, fmt.Sprintf("no service for command %q", cmd))
		return
	}
	msg := IncomingRequest{
		Version:    1,
		Ref:        env.Uid,
		Source:     src.String(),
		Command:    cmd,
		Expiration: env.Expiration,
		Data:       redisapi.EncodeData(payload),
		Tags:       env.Tags,
		ReplyTo:    ReplyQueue,
		Schema:     env.GetSchema(),
		Now:        int64(env.Timestamp),
	}
	b := msg.AppendJSON(nil)
	queue := CommandQueue(cmd)
	full := func(reason string) {
		refuse(reason, envelope.CodeRateLimited, fmt.Sprintf("cannot queue request for %q: the service's queues are full", cmd))
	}
	switch reason := p.admit(queue, len(b), deadline); reason {
	case "":
	case dropQueueBytes, dropCommandBytes:
		// The estimate does not know what services popped: measure.
		later(func() {
			if !p.remeasure(ctx, queue) {
				full(reason)
			} else if reason = p.admit(queue, len(b), deadline); reason != "" {
				full(reason)
			} else {
				p.pushRequest(ctx, env.Uid, src, cmd, queue, b, deadline)
			}
		})
		return
	default:
		full(reason)
		return
	}
	p.pushRequest(ctx, env.Uid, src, cmd, queue, b, deadline)
}

// pushRequest pushes the incoming request b onto queue, the list of cmd,
// and answers it with an error when that fails.
func (p *Peer) pushRequest(ctx context.Context, uid string, src address, cmd, queue string, b []byte, deadline time.Time) {
	p.pushAsyncLanded(ctx, queue, b, deadline, nil, func(err error) {
		p.settled(queue, len(b), false)
		// The error names the service's Redis: the log's, not the
		// sender's.
		code, msg := uint32(envelope.CodeInternal), "the service's queue is unavailable"
		if errors.Is(err, errQueueFull) {
			code, msg = envelope.CodeRateLimited, "the service's queue is full"
			p.metrics.dropped.WithLabelValues(dropQueueFull).Inc()
		} else {
			p.log.Warn("cannot queue request", "queue", queue, "uid", uid, "src", src, "err", err)
		}
		p.sendError(ctx, uid, src, code, fmt.Sprintf("cannot queue request for %q: %s", cmd, msg), deadline)
	}, func() { p.settled(queue, len(b), true) })
}

// sendError answers a request with a signed error envelope.
func (p *Peer) sendError(ctx context.Context, uid string, dst address, code uint32, msg string, deadline time.Time) {
	p.metrics.errorCode(code)
	if !time.Now().Before(deadline) {
		deadline = time.Now().Add(errorTTL * time.Second)
	}
	p.sendAnswer(ctx, uid, dst, nil, "", &Error{Code: code, Message: msg}, deadline)
}

// sendAnswer signs and sends a response (or an error when e is set) to
// dst, encrypted when dst has an e2e key, and caches it for re-sent
// requests. It gives up at deadline.
func (p *Peer) sendAnswer(ctx context.Context, uid string, dst address, data []byte, schema string, e *Error, deadline time.Time) error {
	now := time.Now()
	ttl := deadline.Unix() - now.Unix()
	if ttl <= 0 {
		p.metrics.dropped.WithLabelValues(dropExpired).Inc()
		return fmt.Errorf("answer to %s for %s: %w", dst, uid, envelope.ErrExpired)
	}
	var env *envelope.Envelope
	if e != nil {
		env = envelope.NewError(uid, e.Code, e.Message, uint64(ttl))
	} else {
		env = envelope.NewResponse(uid, nil, uint64(ttl))
	}
	env.Source = envelope.NewAddress(p.Twin(), "")
	env.Destination = envelope.NewAddress(dst.twin, dst.sid)
	if schema != "" {
		env.Schema = &schema
	}
	if e == nil {
		twin, te := p.lookupTwin(ctx, dst.twin, deadline)
		if te != nil {
			p.log.Warn("cannot answer request", "uid", uid, "dst", dst, "err", te.Message)
			return te
		}
		if err := p.setPayload(env, twin, data); err != nil {
			return err
		}
	}
	env.Stamp(now)
	env.Sign(p.id)
	b, err := envelope.Marshal(env)
	if err != nil {
		return err
	}
	if len(b) > envelope.DefaultMaxSize {
		// The relay would close the connection on it: answer with an
		// error instead, and report the answer as not delivered.
		tooBig := errTooBig(len(b))
		if e == nil {
			p.sendAnswer(ctx, uid, dst, nil, "", &Error{Code: envelope.CodeInternal, Message: "response " + tooBig.Error()}, deadline)
		}
		return tooBig
	}
	p.rememberAnswer(uid, dst, b)
	if err := p.send(ctx, b, deadline); err != nil {
		p.log.Warn("answer not delivered", "uid", uid, "dst", dst, "err", err)
		return err
	}
	p.metrics.responsesOut.Inc()
	p.log.Debug("answer sent", "uid", uid, "dst", dst, "error", e != nil)
	return nil
}
