package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Close codes the relay sends.
const (
	statusGoingAway = websocket.StatusGoingAway       // relay shutting down
	statusReplaced  = websocket.StatusCode(4000)      // a newer connection took the session
	statusRevoked   = websocket.StatusPolicyViolation // no longer allowed, or disconnected by an admin
)

// popBatch is how many stored envelopes one store round trip takes.
const popBatch = 64

// closeGrace is how long a close handshake may take before the connection
// is torn down.
const closeGrace = time.Second

// storeTimeout bounds one store operation.
const storeTimeout = 5 * time.Second

// session is one live WebSocket connection of a (twin, sid).
//
// Three goroutines own it: the HTTP handler runs readLoop and then the
// cleanup, sendLoop is the only writer of envelopes, pingLoop sends
// WebSocket pings when the client is silent.
type session struct {
	// Set before the goroutines start, read-only afterwards.
	r           *Relay
	key         SessionKey
	conn        *websocket.Conn // nil in tests that drive handleFrame directly
	log         *slog.Logger
	remote      string
	connectedAt time.Time
	ctx         context.Context // cancelled when the session ends
	cancel      context.CancelFunc
	prev        *session // the session this one replaced; sendLoop waits for it

	send     chan Message  // bounded; filled by deliver under mu, drained by sendLoop
	wakeup   chan struct{} // cap 1: "the store may have something for you"
	sendDone chan struct{} // closed when sendLoop has returned
	pingDone chan struct{} // closed when pingLoop has returned

	lastRead  atomic.Int64 // unix nanoseconds of the last frame; readLoop writes, pingLoop reads
	closeOnce sync.Once

	mu sync.Mutex // guards the following
	// spilled is set when an envelope went to the store while the session
	// was live (its queue was full, or it just connected and the store may
	// hold older envelopes). While set, new envelopes go to the store
	// behind the older ones, so order is kept; sendLoop clears it once the
	// store is empty and no push is in flight.
	spilled bool
	pending int  // store pushes in flight on behalf of this session
	closed  bool // sendLoop is finishing; deliver goes to the store
}

func (r *Relay) newSession(key SessionKey, conn *websocket.Conn, remote string) *session {
	s := &session{
		r:           r,
		key:         key,
		conn:        conn,
		log:         r.log.With("twin", key.Twin, "sid", key.SID),
		remote:      remote,
		connectedAt: time.Now(),
		send:        make(chan Message, r.opts.SendQueueSize),
		wakeup:      make(chan struct{}, 1),
		sendDone:    make(chan struct{}),
		pingDone:    make(chan struct{}),
		spilled:     true, // drain the store before anything else
	}
	s.ctx, s.cancel = context.WithCancel(r.ctx)
	s.lastRead.Store(time.Now().UnixNano())
	s.wake()
	return s
}

// wake tells sendLoop to look at the store.
func (s *session) wake() {
	select {
	case s.wakeup <- struct{}{}:
	default:
	}
}

// deliver hands an envelope to the session: its send queue when there is
// room and nothing older waits in the store, the store otherwise. It never
// blocks on the connection.
func (s *session) deliver(m Message) (routeResult, error) {
	s.mu.Lock()
	if !s.closed && !s.spilled {
		select {
		case s.send <- m:
			s.mu.Unlock()
			return routedLocal, nil
		default:
			s.spilled = true
		}
	}
	closed := s.closed
	if !closed {
		s.pending++
	}
	s.mu.Unlock()
	if closed {
		return s.r.storeFor(s.key, m)
	}
	err := s.r.push(s.key, m)
	s.mu.Lock()
	s.pending--
	s.mu.Unlock()
	s.wake()
	if err != nil {
		return 0, err
	}
	return routedStored, nil
}

// close starts closing the connection with code and reason. The close
// handshake runs in its own goroutine: close never blocks.
func (s *session) close(code websocket.StatusCode, reason string) {
	s.closeOnce.Do(func() {
		if s.conn == nil {
			s.cancel()
			return
		}
		go func() {
			done := make(chan struct{})
			go func() {
				s.conn.Close(code, reason)
				close(done)
			}()
			t := time.NewTimer(closeGrace)
			defer t.Stop()
			select {
			case <-done:
			case <-t.C:
				// A stuck peer (or a write stuck on it) holds up the
				// handshake; cancelling the context tears the socket down.
			}
			s.cancel()
		}()
	})
}

// kill closes a connection whose peer is dead or stuck, without a close
// handshake it could not answer.
func (s *session) kill() {
	s.closeOnce.Do(func() {
		if s.conn != nil {
			s.conn.CloseNow()
		}
		s.cancel()
	})
}

// serve runs the session until its connection ends and cleans up.
func (s *session) serve() {
	s.log.Info("session connected", "remote", s.remote)
	go s.sendLoop()
	go s.pingLoop()
	s.readLoop()
	s.r.unregister(s)
	s.close(websocket.StatusNormalClosure, "")
	s.cancel()
	<-s.sendDone
	<-s.pingDone
	s.log.Info("session disconnected")
}

// readLoop reads frames and routes them until the connection fails.
func (s *session) readLoop() {
	for {
		typ, b, err := s.conn.Read(s.ctx)
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				s.r.counters.drop(dropTooBig)
				s.log.Info("frame over the size limit, closing", "limit", s.r.opts.MaxEnvelopeSize)
			} else if st := websocket.CloseStatus(err); st == -1 && s.ctx.Err() == nil {
				s.log.Debug("read failed", "err", err)
			}
			return
		}
		s.lastRead.Store(time.Now().UnixNano())
		if typ != websocket.MessageBinary {
			s.r.counters.drop(dropNotBinary)
			continue
		}
		s.r.handleFrame(s, b)
	}
}

// sendLoop is the only writer of envelopes. It drains the send queue and,
// when woken, the store, in order: the envelopes in the queue are older than
// those stored while spilled.
func (s *session) sendLoop() {
	defer close(s.sendDone)
	var leftover []Message
	defer func() { s.finish(leftover) }()
	if s.prev != nil {
		// The replaced session puts its unsent envelopes back in the store
		// first; only then is the store in order.
		select {
		case <-s.prev.sendDone:
		case <-s.ctx.Done():
			return
		}
		s.prev = nil
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case m := <-s.send:
			if err := s.write(m.Data); err != nil {
				leftover = []Message{m}
				return
			}
		case <-s.wakeup:
			var err error
			if leftover, err = s.drain(); err != nil {
				return
			}
		}
	}
}

// drain writes the send queue, then the store, until both are empty, and
// then clears spilled. It returns the envelopes taken but not written when a
// write fails.
func (s *session) drain() ([]Message, error) {
	for {
		for {
			select {
			case m := <-s.send:
				if err := s.write(m.Data); err != nil {
					return []Message{m}, err
				}
				continue
			default:
			}
			break
		}
		msgs, err := s.r.pop(s.key, popBatch)
		if err != nil {
			s.log.Warn("store pop failed, retrying", "err", err)
			time.AfterFunc(time.Second, s.wake)
			return nil, nil
		}
		if len(msgs) == 0 {
			s.mu.Lock()
			pending, queued := s.pending, len(s.send)
			if pending == 0 && queued == 0 {
				s.spilled = false
			}
			s.mu.Unlock()
			if queued > 0 {
				continue
			}
			// With a push in flight, its wake brings us back.
			return nil, nil
		}
		for i, m := range msgs {
			if err := s.write(m.Data); err != nil {
				return msgs[i:], err
			}
		}
	}
}

// write sends one envelope with the write deadline. coder/websocket flushes
// every message, so there is no write coalescing to be had here; a message
// is one frame and one flush.
func (s *session) write(b []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.r.opts.WriteTimeout)
	err := s.conn.Write(ctx, websocket.MessageBinary, b)
	cancel()
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Info("write failed, closing", "err", err)
		}
		s.kill()
		return err
	}
	s.r.counters.msgsOut.Add(1)
	s.r.counters.bytesOut.Add(uint64(len(b)))
	return nil
}

// finish runs when sendLoop ends: from now on deliver goes to the store, and
// what was taken but not written goes back to the front of the store.
func (s *session) finish(leftover []Message) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	for done := false; !done; {
		select {
		case m := <-s.send:
			leftover = append(leftover, m)
		default:
			done = true
		}
	}
	if len(leftover) > 0 {
		ctx, cancel := context.WithTimeout(s.r.ctx, storeTimeout)
		err := s.r.store.Requeue(ctx, s.key, leftover)
		cancel()
		if err != nil {
			s.r.counters.drops[dropStoreError].Add(uint64(len(leftover)))
			s.log.Error("lost unsent envelopes", "count", len(leftover), "err", err)
		} else {
			s.r.counters.stored.Add(int64(len(leftover)))
		}
	}
	if n := s.r.lookup(s.key); n != nil && n != s {
		n.wake()
	}
}

// pingLoop pings a silent client and closes the session when no pong comes.
func (s *session) pingLoop() {
	defer close(s.pingDone)
	if s.conn == nil {
		return
	}
	interval := s.r.opts.PingInterval
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, s.lastRead.Load())) < interval {
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.r.opts.PingTimeout)
		err := s.conn.Ping(ctx)
		cancel()
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Info("ping unanswered, closing", "err", err)
				s.kill()
			}
			return
		}
		s.lastRead.Store(time.Now().UnixNano())
	}
}

// handleConnect authenticates a WebSocket request, upgrades it and serves
// the session until it ends.
func (r *Relay) handleConnect(w http.ResponseWriter, req *http.Request) {
	key, status, err := r.authenticate(req)
	if err != nil {
		r.counters.authFailures.Add(1)
		r.log.Debug("connection refused", "remote", req.RemoteAddr, "status", status, "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	if p := r.policy.Load(); !p.mayConnect(key.Twin) {
		r.counters.authFailures.Add(1)
		http.Error(w, "twin not allowed on this relay", http.StatusForbidden)
		return
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		http.Error(w, "relay shutting down", http.StatusServiceUnavailable)
		return
	}
	r.conns.Add(1)
	r.mu.Unlock()
	defer r.conns.Done()

	conn, err := websocket.Accept(w, req, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		r.log.Debug("websocket upgrade failed", "remote", req.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(int64(r.opts.MaxEnvelopeSize))
	s := r.newSession(key, conn, req.RemoteAddr)
	if !r.register(s) {
		conn.Close(statusGoingAway, "relay shutting down")
		s.cancel()
		return
	}
	r.counters.connects.Add(1)
	s.serve()
}

// register makes s the live session of its key, replacing (and closing) the
// previous one. It fails once Shutdown has begun.
func (r *Relay) register(s *session) bool {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return false
	}
	m := r.sessions[s.key.Twin]
	if m == nil {
		m = make(map[string]*session)
		r.sessions[s.key.Twin] = m
	}
	old := m[s.key.SID]
	m[s.key.SID] = s
	if old == nil {
		r.nsess++
	}
	r.mu.Unlock()
	if old != nil {
		s.prev = old
		r.counters.replaced.Add(1)
		old.log.Info("session replaced", "remote", s.remote)
		old.close(statusReplaced, "replaced by a new connection")
	}
	return true
}

// unregister removes s if it is still the live session of its key; a
// session that was replaced leaves its successor alone.
func (r *Relay) unregister(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.sessions[s.key.Twin]
	if m[s.key.SID] != s {
		return
	}
	delete(m, s.key.SID)
	if len(m) == 0 {
		delete(r.sessions, s.key.Twin)
	}
	r.nsess--
}

// lookup returns the live session of k, or nil.
func (r *Relay) lookup(k SessionKey) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[k.Twin][k.SID]
}

// lookupRaw is lookup with the sid as bytes, without allocating.
func (r *Relay) lookupRaw(twin uint32, sid []byte) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[twin][string(sid)]
}

func (r *Relay) sessionCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nsess
}

func (r *Relay) sendQueueDepth() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.sessions {
		for _, s := range m {
			n += len(s.send)
		}
	}
	return n
}

// twinSessions returns the live sessions of twin (all twins when all).
func (r *Relay) liveSessions(filter func(SessionKey) bool) []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*session
	for _, m := range r.sessions {
		for _, s := range m {
			if filter == nil || filter(s.key) {
				out = append(out, s)
			}
		}
	}
	return out
}

// push puts m in the store for k and counts it.
func (r *Relay) push(k SessionKey, m Message) error {
	ctx, cancel := context.WithTimeout(r.ctx, storeTimeout)
	defer cancel()
	if err := r.store.Push(ctx, k, m); err != nil {
		return err
	}
	r.counters.stored.Add(1)
	return nil
}

// pop takes up to n envelopes for k from the store, counting the expired
// ones it discarded.
func (r *Relay) pop(k SessionKey, n int) ([]Message, error) {
	ctx, cancel := context.WithTimeout(r.ctx, storeTimeout)
	defer cancel()
	msgs, expired, err := r.store.Pop(ctx, k, n, r.opts.Now())
	if err != nil {
		return nil, err
	}
	r.counters.stored.Add(-int64(len(msgs) + expired))
	if expired > 0 {
		r.counters.drops[dropStoreExpired].Add(uint64(expired))
	}
	return msgs, nil
}

// storeFor stores m for k when no session takes it, and wakes a session
// that connected meanwhile.
func (r *Relay) storeFor(k SessionKey, m Message) (routeResult, error) {
	if err := r.push(k, m); err != nil {
		return 0, err
	}
	if s := r.lookup(k); s != nil {
		s.wake()
	}
	return routedStored, nil
}

// deliverLocal hands m to k's live session, or stores it.
func (r *Relay) deliverLocal(k SessionKey, m Message) (routeResult, error) {
	if s := r.lookup(k); s != nil {
		return s.deliver(m)
	}
	return r.storeFor(k, m)
}
