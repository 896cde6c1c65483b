package peer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// Error is an RMB error answer: a code (docs/protocol.md §9 and the Code*
// constants of package envelope) and a message. A Handler returning an
// *Error answers with its code; any other error answers with code 500.
type Error struct {
	Code    uint32
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("rmb error %d: %s", e.Code, e.Message) }

// Request is an incoming request as a Handler sees it.
type Request struct {
	UID      string
	Source   uint32
	Session  string // source session, "" for the default one
	Command  string
	Data     []byte // decrypted payload
	Schema   string
	Tags     string
	Deadline time.Time
}

// Handler serves one command in-process. Its ctx ends at the request's
// deadline. The returned bytes are the response payload.
type Handler func(ctx context.Context, req *Request) ([]byte, error)

// Handle serves cmd with h in-process, before any Redis service. A nil h
// removes the handler.
func (p *Peer) Handle(cmd string, h Handler) {
	p.handlersMu.Lock()
	defer p.handlersMu.Unlock()
	if h == nil {
		delete(p.handlers, cmd)
		return
	}
	p.handlers[cmd] = h
}

func (p *Peer) handler(cmd string) Handler {
	p.handlersMu.RLock()
	defer p.handlersMu.RUnlock()
	return p.handlers[cmd]
}

// Response is one destination's answer to a Call.
type Response struct {
	Source    uint32
	Session   string
	Data      []byte
	Schema    string
	Timestamp time.Time
	// Err is set when the destination, a relay or this peer answered with
	// an error (code 408 when no answer came before the deadline).
	Err *Error
}

// CallOptions tune a Call. Nil means defaults.
type CallOptions struct {
	// TTL is how long the request lives; default 300s, at most 1800s.
	TTL time.Duration
	// Schema is sent as the envelope schema (shm), e.g. application/json.
	Schema string
	// Tags are the envelope tags, e.g. "fail-fast".
	Tags string
	// Session is the destination session id; "" for the default one.
	Session string
}

// Call sends cmd with data to every twin in dst and waits for all answers,
// the request deadline or ctx. Responses come in arrival order, one per
// distinct destination; a destination that did not answer in time gets a
// Response with Err.Code 408. The error is non-nil only when ctx ended
// first (the responses so far are returned) or the peer is not running.
func (p *Peer) Call(ctx context.Context, dst []uint32, cmd string, data []byte, opts *CallOptions) ([]Response, error) {
	if opts == nil {
		opts = &CallOptions{}
	}
	select {
	case <-p.ready:
	case <-p.done:
		return nil, errors.New("peer: not running")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// The sends stop when the caller gives up or the peer stops.
	p.runMu.Lock()
	runCtx := p.runCtx
	p.runMu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(runCtx, cancel)()
	dsts := uniqueTwins(dst)
	if len(dsts) == 0 {
		return nil, errors.New("peer: no destination")
	}
	spec := &requestSpec{
		uid:     newUID(),
		cmd:     cmd,
		payload: data,
		ttl:     envelope.ClampTTL(uint64(opts.TTL / time.Second)),
		start:   time.Now(),
		schema:  opts.Schema,
		session: opts.Session,
	}
	if opts.Tags != "" {
		spec.tags = &opts.Tags
	}
	ch := make(chan Response, len(dsts))
	var mu sync.Mutex
	deliver := func(_ context.Context, r *Response, after *writeOp) {
		if after != nil {
			p.write(*after) // not persisted: Call's requests are not in Redis
		}
		mu.Lock()
		defer mu.Unlock()
		select {
		case ch <- *r:
		default: // an extra relay error after all answers; nobody waits
		}
	}
	go p.startRequest(ctx, spec, dsts, deliver, nil)
	var out []Response
	for len(out) < len(dsts) {
		select {
		case r := <-ch:
			out = append(out, r)
		case <-ctx.Done():
			p.forget(spec.uid)
			return out, ctx.Err()
		case <-p.done:
			return out, errors.New("peer: stopped")
		}
	}
	return out, nil
}

// copyRounds splits the dst list of a request from Redis into rounds, for
// sending each listed destination as often as it is listed, as the Rust
// peer does (one envelope per entry, one answer per envelope). Round k
// holds, in order, the destinations listed more than k times; twin 0 is
// left out (the decoder refuses it). dst is at most MaxDestinations long
// (the decoder checks), so are the rounds together.
func copyRounds(dst []uint32) [][]uint32 {
	var rounds [][]uint32
	listed := make(map[uint32]int, len(dst))
	for _, d := range dst {
		if d == 0 {
			continue
		}
		k := listed[d]
		listed[d] = k + 1
		if k == len(rounds) {
			rounds = append(rounds, make([]uint32, 0, len(dst)-len(listed)+1))
		}
		rounds[k] = append(rounds[k], d)
	}
	return rounds
}

// answerable is the entries of dst an error answer goes to when a request
// is refused before it is sent: one per listed destination, as a sent one
// would be answered, but twin 0 when dst has none or is over the bound
// (so a list of a million entries gets one answer, not a million).
func answerable(dst []uint32) []uint32 {
	if len(dst) > MaxDestinations {
		return []uint32{0}
	}
	out := make([]uint32, 0, len(dst))
	for _, d := range dst {
		if d != 0 {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return []uint32{0}
	}
	return out
}

// startCopies is startRequest for a request from Redis whose dst may list
// a destination more than once: the receiving peer takes an envelope with
// a uid it has seen from the same source for a re-send, so each round of
// copyRounds goes as a request of its own, with its own uid (the first
// keeps spec.uid), pending, persisted and timed out like any other, its
// answers delivered the same way. It returns the uids used, and false
// when ctx ended before every round was handled.
func (p *Peer) startCopies(ctx context.Context, spec *requestSpec, dst []uint32,
	deliver func(context.Context, *Response, *writeOp), failed func(uid string, dst uint32, e *Error)) ([]string, bool) {
	rounds := copyRounds(dst)
	uids := make([]string, 0, len(rounds))
	for k, dsts := range rounds {
		s := spec
		if k > 0 {
			c := *spec
			c.uid = newUID()
			s = &c
		}
		uids = append(uids, s.uid)
		if !p.startRequest(ctx, s, dsts, deliver, func(d uint32, e *Error) { failed(s.uid, d, e) }) {
			return uids, false
		}
	}
	return uids, true
}

func uniqueTwins(dst []uint32) []uint32 {
	out := make([]uint32, 0, len(dst))
	for _, d := range dst {
		if d != 0 && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// newUID is a random UUID v4, in its usual text form.
func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	hex.Encode(out[9:13], b[4:6])
	hex.Encode(out[14:18], b[6:8])
	hex.Encode(out[19:23], b[8:10])
	hex.Encode(out[24:36], b[10:16])
	out[8], out[13], out[18], out[23] = '-', '-', '-', '-'
	return string(out[:])
}

// requestSpec is an outgoing request before it is split per destination.
type requestSpec struct {
	uid     string
	cmd     string
	payload []byte
	ttl     uint64    // seconds from start
	start   time.Time // envelope timestamp base
	tags    *string
	schema  string
	session string
	// ret and ref are the client's reply queue and ref for a request
	// from Redis; such requests are persisted (pending.go).
	ret, ref string
}

func (s *requestSpec) deadline() time.Time {
	return time.Unix(s.start.Unix()+int64(s.ttl), 0)
}

// pending is a sent request waiting for answers.
type pending struct {
	uid      string
	sent     time.Time
	deadline time.Time
	waiting  map[uint32][]byte // destination -> signed envelope (nil until sent)
	// deliver hands over an answer; after, when not nil, is bookkeeping
	// to queue once the answer is safe (forgetOp).
	deliver  func(ctx context.Context, r *Response, after *writeOp)
	ret, ref string // the client's, for a request from Redis
	// persisted is set once redisLoop wrote the waiting destinations to
	// PendingHash; from then on each answered one is deleted there.
	persisted bool
	// finishRaw, while set, is the LocalProcessing entry the request came
	// from, whose removal (and the persisting of the request with it)
	// waits a little (finishLater): the answer that comes first takes it
	// into the transaction of its push instead (takeFinish).
	finishRaw string

	// Re-sends (resend.go).
	resends  int       // timed re-sends so far, at most maxResends
	resendAt time.Time // when the next timed re-send is due
	reloaded bool      // loaded from PendingHash: re-send once connected
	resent   bool      // some destination was sent more than once
	// relayErrs are relay errors (source twin 0) that could not be
	// attributed yet: they name no destination, and several wait.
	relayErrs []*Error
}

// startRequest registers the request, then builds, signs and sends one
// envelope per destination, retrying until the deadline. A destination
// that cannot be reached is answered with an error through deliver and
// reported to failed (may be nil). It returns false when ctx ended before
// every destination was handled.
func (p *Peer) startRequest(ctx context.Context, spec *requestSpec, dsts []uint32,
	deliver func(context.Context, *Response, *writeOp), failed func(dst uint32, e *Error)) bool {
	deadline := spec.deadline()
	pd := &pending{
		uid:      spec.uid,
		sent:     time.Now(),
		deadline: deadline,
		waiting:  make(map[uint32][]byte, len(dsts)),
		deliver:  deliver,
		ret:      spec.ret,
		ref:      spec.ref,
	}
	for _, d := range dsts {
		pd.waiting[d] = nil
	}
	pd.resendAt = pd.nextResend()
	p.pendMu.Lock()
	p.pending[spec.uid] = pd
	p.pendMu.Unlock()

	for _, d := range dsts {
		b, e := p.buildRequest(ctx, spec, d, deadline)
		if e == nil {
			if err := p.send(ctx, b, deadline); err != nil {
				if ctx.Err() != nil {
					return false // stopping: the caller keeps the request for later
				}
				e = &Error{Code: envelope.CodeUndeliverable, Message: fmt.Sprintf("request to twin %d not delivered: %v", d, errUndeliverable)}
			} else {
				p.metrics.requestsOut.Inc()
				// From now on the sweeper times it out and the resender
				// may send it again.
				p.pendMu.Lock()
				if _, ok := pd.waiting[d]; ok {
					pd.waiting[d] = b
				}
				p.pendMu.Unlock()
			}
		}
		if e != nil && ctx.Err() != nil {
			return false // the registrar lookup was cut short by the stop
		}
		if e != nil {
			if failed != nil {
				failed(d, e)
			}
			p.complete(ctx, spec.uid, d, &Response{Source: d, Timestamp: time.Now(), Err: e})
		}
	}
	return true
}

// buildRequest makes the signed envelope of spec for dst, encrypted when
// dst has an e2e key.
func (p *Peer) buildRequest(ctx context.Context, spec *requestSpec, dst uint32, deadline time.Time) ([]byte, *Error) {
	twin, e := p.lookupTwin(ctx, dst, deadline)
	if e != nil {
		return nil, e
	}
	env := envelope.NewRequest(spec.uid, spec.cmd, nil, spec.ttl)
	env.Timestamp = uint64(spec.start.Unix())
	env.Tags = spec.tags
	if spec.schema != "" {
		env.Schema = &spec.schema
	}
	env.Source = envelope.NewAddress(p.Twin(), "")
	env.Destination = envelope.NewAddress(dst, spec.session)
	if err := p.setPayload(env, twin, spec.payload); err != nil {
		return nil, &Error{Code: envelope.CodeInternal, Message: err.Error()}
	}
	return p.seal(env, "request")
}

// seal stamps, signs and marshals an outgoing envelope (what names it in
// the error when it expired before it was sent).
func (p *Peer) seal(env *envelope.Envelope, what string) ([]byte, *Error) {
	env.Stamp(time.Now())
	if env.Expiration == 0 {
		return nil, &Error{Code: envelope.CodeExpired, Message: what + " expired before it was sent"}
	}
	env.Sign(p.id)
	b, err := envelope.Marshal(env)
	if err != nil {
		return nil, &Error{Code: envelope.CodeInternal, Message: err.Error()}
	}
	if len(b) > envelope.DefaultMaxSize {
		// A relay closes the connection on such a frame (1009), and the
		// envelope would be sent again on every reconnection.
		return nil, &Error{Code: envelope.CodeBadPayload, Message: errTooBig(len(b)).Error()}
	}
	return b, nil
}

// errTooBig says an envelope would exceed what relays accept.
func errTooBig(n int) error {
	return fmt.Errorf("envelope of %d bytes is over the %d-byte limit of relays", n, envelope.DefaultMaxSize)
}

// setPayload puts payload in cipher when the twin has an e2e key, else in
// plain.
func (p *Peer) setPayload(env *envelope.Envelope, twin *registrar.Twin, payload []byte) error {
	if len(twin.E2EKey) == 0 {
		env.Payload = &envelope.Envelope_Plain{Plain: payload}
		return nil
	}
	sealed, err := p.e2e.Seal(twin.E2EKey, payload)
	if err != nil {
		return fmt.Errorf("encrypt for twin %d: %w", twin.ID, err)
	}
	env.Payload = &envelope.Envelope_Cipher{Cipher: sealed}
	return nil
}

// lookupTwin finds a twin, from the registrar client's cache when it
// holds the twin, and otherwise asking the registrar, retrying transient
// failures until deadline or until ctx ends. An unknown twin is code 103.
func (p *Peer) lookupTwin(ctx context.Context, id uint32, deadline time.Time) (*registrar.Twin, *Error) {
	if c, ok := p.reg.(cachedTwin); ok {
		// The usual case, without the context and timer of a deadline.
		t, err := c.CachedTwin(id)
		switch {
		case err == nil:
			return t, nil
		case errors.Is(err, registrar.ErrNotFound):
			return nil, unknownTwin(id)
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		t, err := p.reg.Twin(ctx, id)
		switch {
		case err == nil:
			return t, nil
		case errors.Is(err, registrar.ErrNotFound):
			return nil, unknownTwin(id)
		}
		p.log.Warn("registrar lookup failed; retrying", "twin", id, "err", err)
		select {
		case <-ctx.Done():
			return nil, &Error{Code: envelope.CodeInternal, Message: fmt.Sprintf("registrar lookup of twin %d: %v", id, err)}
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func unknownTwin(id uint32) *Error {
	return &Error{Code: envelope.CodeUnknownTwin, Message: fmt.Sprintf("unknown twin %d", id)}
}

// complete hands the answer of src to the request uid. src 0 is a relay
// error: relay errors name no destination (PROTOCOL.md §4: same uid,
// source twin 0), so one is attributed to a destination only when no
// other is left to which it could belong. Until then it is kept on the
// request; once every destination still waiting has a relay error, each
// gets one. Each destination gets exactly one response.
func (p *Peer) complete(ctx context.Context, uid string, src uint32, r *Response) {
	p.pendMu.Lock()
	pd := p.pending[uid]
	if pd == nil {
		p.pendMu.Unlock()
		p.metrics.dropped.WithLabelValues(dropUnknownUID).Inc()
		p.log.Debug("answer for unknown or expired request dropped", "uid", uid, "src", src)
		return
	}
	var done []*Response
	if src == 0 {
		if pd.resent && r.Err.Code == envelope.CodeRateLimited {
			// The relay refused a copy we sent again, not the request:
			// the first copy may well have been delivered.
			p.pendMu.Unlock()
			p.metrics.dropped.WithLabelValues(dropResendRefused).Inc()
			return
		}
		pd.relayErrs = append(pd.relayErrs, r.Err)
	} else {
		if _, ok := pd.waiting[src]; !ok {
			p.pendMu.Unlock()
			p.metrics.dropped.WithLabelValues(dropLateResponse).Inc()
			return
		}
		delete(pd.waiting, src)
		done = append(done, r)
	}
	if n := len(pd.waiting); n > 0 && len(pd.relayErrs) >= n {
		// Every destination left was refused by the relay.
		dsts := make([]uint32, 0, n)
		for d := range pd.waiting {
			dsts = append(dsts, d)
		}
		slices.Sort(dsts)
		for i, d := range dsts {
			delete(pd.waiting, d)
			done = append(done, &Response{Source: d, Timestamp: r.Timestamp, Err: pd.relayErrs[i]})
		}
		pd.relayErrs = nil
	}
	finishRaw := ""
	if len(pd.waiting) == 0 {
		delete(p.pending, uid)
		finishRaw = takeFinish(pd)
	}
	persisted := pd.persisted
	p.pendMu.Unlock()
	if len(done) == 0 {
		p.log.Debug("relay error kept until it can be attributed to a destination", "uid", uid, "code", r.Err.Code)
	}
	for i, r := range done {
		if r.Err != nil {
			p.metrics.errorCode(r.Err.Code)
		} else {
			p.metrics.roundTrip.Observe(time.Since(pd.sent).Seconds())
		}
		p.metrics.responsesIn.Inc()
		var after *writeOp
		if persisted {
			after = forgetOp(uid, r.Source)
		}
		if i == len(done)-1 && finishRaw != "" {
			after = withFinish(after, finishRaw)
		}
		pd.deliver(ctx, r, after)
	}
}

// forget drops a request of Call nobody waits for any more.
func (p *Peer) forget(uid string) {
	p.pendMu.Lock()
	delete(p.pending, uid)
	p.pendMu.Unlock()
}

// sweeper answers requests whose deadline passed with code 408 and
// forgets old duplicate-suppression entries.
func (p *Peer) sweeper(ctx context.Context) {
	t := time.NewTicker(p.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		type expired struct {
			pd        *pending
			dsts      []uint32
			persisted bool
			relayErrs []*Error
			finishRaw string
		}
		var list []expired
		var orphans []string
		p.pendMu.Lock()
		for uid, pd := range p.pending {
			if now.Before(pd.deadline) {
				continue
			}
			// Destinations not sent yet are answered by their sender.
			e := expired{pd: pd, persisted: pd.persisted, relayErrs: pd.relayErrs}
			for d, b := range pd.waiting {
				if b != nil {
					e.dsts = append(e.dsts, d)
					delete(pd.waiting, d)
				}
			}
			if len(pd.waiting) == 0 {
				delete(p.pending, uid)
				e.finishRaw = takeFinish(pd)
			}
			switch {
			case len(e.dsts) > 0:
				list = append(list, e)
			case e.finishRaw != "":
				// Not deferred without a destination sent; kept right
				// all the same.
				orphans = append(orphans, e.finishRaw)
			}
		}
		p.pendMu.Unlock()
		for _, raw := range orphans {
			p.finish(LocalProcessing, raw, "")
		}
		for _, e := range list {
			slices.Sort(e.dsts)
			for i, d := range e.dsts {
				p.metrics.errorCode(envelope.CodeTimeout)
				var after *writeOp
				if e.persisted {
					after = forgetOp(e.pd.uid, d)
				}
				if i == len(e.dsts)-1 && e.finishRaw != "" {
					after = withFinish(after, e.finishRaw)
				}
				msg := fmt.Sprintf("no answer from twin %d before the deadline", d)
				if len(e.relayErrs) > 0 {
					msg += fmt.Sprintf(" (the relay refused %d of this request's destinations, not telling which: %s)",
						len(e.relayErrs), e.relayErrs[0].Message)
				}
				e.pd.deliver(ctx, &Response{Source: d, Timestamp: now, Err: &Error{Code: envelope.CodeTimeout, Message: msg}}, after)
			}
		}
		p.sweepSeen(now)
	}
}

// errorFromEnvelope converts an error message.
func errorFromEnvelope(e *envelope.Error) *Error {
	return &Error{Code: e.GetCode(), Message: strings.Clone(e.GetMessage())}
}
