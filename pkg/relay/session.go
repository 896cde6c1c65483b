package relay

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/rmb-go/rmb/internal/wsframe"
)

// Close codes the relay sends. They keep coder/websocket's type, which the
// clients (and the tests) use; the connection itself is a wsframe.Conn.
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

// flushBytes: the send loop flushes at least this often while its queue
// keeps refilling; otherwise it flushes when the queue runs dry.
const flushBytes = 32 << 10

// nowMax: an envelope up to this size may be written by deliverFrom, on the
// caller's goroutine; a larger one could make the connection write it at
// once, and wait.
const nowMax = 4 << 10

// States of a session's sender role (session.sender).
const (
	// senderHeld: serve has not started sending yet (a session is
	// registered before it is served, and tests drive sessions that are
	// never served). Wake-ups are remembered, nothing is written.
	senderHeld uint8 = iota
	// senderStopped: no send loop runs; deliver writes itself
	// (deliverFrom) or starts one, and wake starts one.
	senderStopped
	// senderRunning: a send loop runs (or serve's first look at the
	// store); it alone writes envelopes.
	senderRunning
)

// session is one live WebSocket connection of a (twin, sid).
//
// One goroutine owns it: serve runs readLoop and then the cleanup. One
// holder of the sender role at a time writes envelopes: a sender's reader
// writing directly to an idle session (deliverFrom), or sendLoop, which
// runs on a goroutine of its own only while the session has a backlog. A
// timer (pingCheck) pings a silent client, and drops the send queue of a
// session that no longer uses it.
type session struct {
	// Set before the goroutines start, read-only afterwards.
	r           *Relay
	key         SessionKey
	conn        *wsframe.Conn // nil in tests that drive handleFrame directly
	log         *slog.Logger
	remote      string     // RemoteAddr of the connection
	addr        string     // the client's address, counted against MaxSessionsPerAddress
	ip          netip.Addr // the client's IP address (through trusted proxies)
	connectedAt time.Time
	ctx         context.Context // cancelled when the session ends
	cancel      context.CancelFunc
	prev        *session // the session this one replaced; sendLoop waits for it
	token       string   // in a cluster: this connection's owner token (see clusterlimits.go)

	sendDone chan struct{} // closed when finish has run: the session sends nothing more
	done     chan struct{} // closed when serve has returned (a cluster takeover waits for it)

	// frames counts the messages and pongs read: a sign of life for
	// pingCheck that costs no clock read per frame. The reader writes it.
	frames    atomic.Uint64
	closeOnce sync.Once

	// Per-session counters for the status page (SessionInfo): envelopes
	// and bytes read and written, and how many of those read were routed
	// or were pings; the rest were dropped. otherDrops counts frames
	// dropped before routing (text frames).
	msgsIn, bytesIn, msgsOut, bytesOut atomic.Uint64
	routedIn, pingsIn, otherDrops      atomic.Uint64

	// Owned by pingCheck (timer callbacks run one at a time: the timer is
	// re-armed at the end of each).
	seen     uint64    // frames at the previous check
	quiet    int       // checks in a row that saw no frame
	pingSent time.Time // when the unanswered ping went out; zero when none is
	pingSeen uint64    // frames when it went out

	// Owned by the sender role (sender == senderRunning).
	unflushed      []Message // written to the connection's buffer, not flushed yet
	unflushedBytes int

	mu sync.Mutex // guards the following
	// send is the bounded send queue, filled by deliver and drained by
	// sendLoop. It is made at the first delivery that cannot be written
	// at once (and sendLoop woken to pick it up), and dropped by pingCheck
	// once unused for a while: an idle session does not pay for its
	// buffer.
	send chan Message
	// wakeup (cap 1: "the store, or a new send queue, may have something
	// for you") is made when the first send loop starts; until then, and
	// while serve looks at the store, woken remembers a wake-up.
	wakeup    chan struct{}
	sendBytes int64       // bytes of the envelopes in send (SendQueueBytes)
	pingTimer *time.Timer // runs pingCheck
	pending   int         // store pushes in flight on behalf of this session
	// spilled is set when an envelope went to the store while the session
	// was live (its queue was full, or it just connected and the store may
	// hold older envelopes). While set, new envelopes go to the store
	// behind the older ones, so order is kept; sendLoop clears it once the
	// store is empty and no push is in flight.
	spilled bool
	closed  bool  // finish has begun; deliver goes to the store
	woken   bool  // a wake-up came while wakeup was not made yet
	sender  uint8 // senderHeld, senderStopped or senderRunning
	// sendUsed: an envelope went through send since pingCheck last looked.
	sendUsed bool
	// holder is the reader's flusher that holds the sender role (no send
	// loop runs then), or nil.
	holder *flusher
}

func (r *Relay) newSession(key SessionKey, conn *wsframe.Conn, remote string) *session {
	s := &session{
		r:           r,
		key:         key,
		conn:        conn,
		log:         r.log.With("twin", key.Twin, "sid", key.SID),
		remote:      remote,
		connectedAt: time.Now(),
		sendDone:    make(chan struct{}),
		done:        make(chan struct{}),
		spilled:     true, // drain the store before anything else (startSending)
	}
	s.ctx, s.cancel = context.WithCancel(r.ctx)
	return s
}

// wake tells the sender to look at the store, starting a send loop when
// none runs.
func (s *session) wake() {
	s.mu.Lock()
	s.wakeLocked()
	s.mu.Unlock()
}

// wakeLocked is wake with s.mu held.
func (s *session) wakeLocked() {
	switch {
	case s.closed:
	case s.sender == senderStopped:
		s.woken = true
		s.startSenderLocked(nil)
	case s.wakeup != nil:
		select {
		case s.wakeup <- struct{}{}:
		default:
		}
	default:
		s.woken = true
	}
}

// startSenderLocked starts a send loop that writes first (envelopes taken
// from the store) and then goes on as usual; s.mu is held.
func (s *session) startSenderLocked(first []Message) {
	s.sender = senderRunning
	if s.wakeup == nil {
		s.wakeup = make(chan struct{}, 1)
	}
	if s.woken {
		s.woken = false
		select {
		case s.wakeup <- struct{}{}:
		default:
		}
	}
	go s.sendLoop(first)
}

// startSending ends senderHeld: serve calls it once, before reading. It
// looks at the store itself and starts a send loop only when there is
// something to send (or an older session to wait for): most sessions
// connect to an empty store and stay idle.
func (s *session) startSending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.prev != nil || len(s.send) > 0 || s.ctx.Err() != nil {
		s.woken = true
		s.startSenderLocked(nil)
		return
	}
	s.sender = senderRunning
	s.woken = false
	s.mu.Unlock()
	msgs, err := s.r.pop(s.key, popBatch)
	s.mu.Lock()
	if err == nil && len(msgs) == 0 && !s.woken && s.pending == 0 && len(s.send) == 0 {
		s.spilled = false
		s.sender = senderStopped
		return
	}
	// The loop writes msgs, then looks at the queue and the store again
	// (and reports a failed pop, retrying).
	s.woken = true
	s.startSenderLocked(msgs)
}

// stopSending makes sure finish runs once the session has ended: by the
// send loop when one runs (it sees ctx done), here otherwise.
func (s *session) stopSending() {
	s.mu.Lock()
	run := !s.closed && s.sender != senderRunning
	if run {
		s.sender = senderRunning
	}
	s.mu.Unlock()
	if run {
		s.finish(nil)
	}
}

// pause gives the sender role back when there is nothing to send; s.mu is
// taken. It reports whether the loop may return.
func (s *session) pause() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil || len(s.send) > 0 || len(s.wakeup) > 0 || len(s.unflushed) > 0 {
		return false
	}
	s.sender = senderStopped
	return true
}

// deliver hands an envelope to the session: its send queue when there is
// room and nothing older waits in the store, the store otherwise. It never
// blocks on the connection.
func (s *session) deliver(m Message) (routeResult, error) {
	return s.deliverFrom(m, nil)
}

// deliverFrom is deliver for a caller that may write m itself: when the
// session has no send loop and nothing queued, the caller takes the sender
// role and writes m (writeNow). A reader passes its flusher, which flushes
// later; other callers pass nil and flush at once. Neither waits for a
// slow client: what the socket does not take is left to a send loop.
func (s *session) deliverFrom(m Message, fl *flusher) (routeResult, error) {
	s.mu.Lock()
	if !s.closed && !s.spilled && len(s.send) == 0 && s.conn != nil && len(m.Data) <= nowMax {
		switch {
		case s.sender == senderStopped:
			s.sender, s.holder = senderRunning, fl
			s.mu.Unlock()
			if fl != nil {
				fl.held = append(fl.held, s)
			}
			return s.writeNow(m, fl)
		case fl != nil && s.holder == fl:
			s.mu.Unlock()
			return s.writeNow(m, fl)
		}
	}
	if !s.closed && !s.spilled {
		if s.send == nil {
			s.send = make(chan Message, s.r.opts.SendQueueSize)
			s.wakeLocked() // sendLoop picks the new queue up
		}
		if s.sendBytes+int64(len(m.Data)) > s.r.opts.SendQueueBytes {
			s.spilled = true
		} else {
			select {
			case s.send <- m:
				s.sendBytes += int64(len(m.Data))
				s.sendUsed = true
				if s.sender == senderStopped {
					s.startSenderLocked(nil)
				}
				s.mu.Unlock()
				return routedLocal, nil
			default:
				s.spilled = true
			}
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

// writeNow writes m to the connection's buffer on the caller's goroutine,
// which holds the sender role (deliverFrom). With a flusher it stays
// there until the flusher flushes, unless a lot is buffered already;
// otherwise it is flushed at once (flushNow).
func (s *session) writeNow(m Message, fl *flusher) (routeResult, error) {
	if err := s.buffer(m); err != nil {
		s.releaseFailed()
		return routedLocal, nil // finish puts m back in the store
	}
	if fl == nil || s.unflushedBytes >= flushBytes {
		s.flushNow()
	}
	return routedLocal, nil
}

// flushNow flushes as far as the socket takes it without waiting
// (wsframe.Conn.TryFlush) and gives the sender role back.
func (s *session) flushNow() {
	flushed, err := s.conn.TryFlush()
	switch {
	case err != nil:
		s.writeFailed(err)
		s.releaseFailed()
		return
	case flushed:
		s.flushed()
	}
	s.release(flushed)
}

// release gives back the sender role that deliverFrom took. When the
// write was not done (the socket did not take it all, or it failed), or
// envelopes or a wake-up came meanwhile, a send loop takes over: it
// flushes the rest and goes on, or puts what was not sent back in the
// store (finish).
func (s *session) release(done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holder = nil
	if done && len(s.send) == 0 && len(s.wakeup) == 0 && !s.woken && s.ctx.Err() == nil {
		s.sender = senderStopped
		return
	}
	s.startSenderLocked(nil)
}

// releaseFailed gives the sender role to a send loop after a failed write.
// The loop gets the envelopes not sent as its first: it cannot write them
// either (the connection is closing or broken), and puts them back in the
// store (finish). A loop without them could find nothing left to flush
// (the close frame went out already) and count them as sent.
func (s *session) releaseFailed() {
	first := s.takeUnflushed()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holder = nil
	s.startSenderLocked(first)
}

// flusher is held by a session's reader. The envelopes it routes to
// sessions with no send loop are written to their connections' buffers
// by the reader itself (deliverFrom), and flushed together before the
// reader waits for the network (flush): a burst read at once costs each
// destination one write, and no goroutine hand-off.
type flusher struct {
	held []*session // sessions whose sender role this flusher holds
}

// flush flushes every session the flusher holds and gives their sender
// roles back.
func (fl *flusher) flush() {
	for i, s := range fl.held {
		fl.held[i] = nil
		s.mu.Lock()
		mine := s.holder == fl
		s.mu.Unlock()
		if mine { // not given back already by writeNow
			s.flushNow()
		}
	}
	fl.held = fl.held[:0]
}

// isClosed reports whether sendLoop has finished.
func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// took accounts for m, taken from the send queue.
func (s *session) took(m Message) {
	s.mu.Lock()
	s.sendBytes -= int64(len(m.Data))
	s.mu.Unlock()
}

// queue returns the send queue, nil until the first delivery.
func (s *session) queue() chan Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.send
}

// queued returns the number of envelopes in the send queue.
func (s *session) queued() int { return len(s.queue()) }

// queuedBytes returns the bytes of the envelopes in the send queue.
func (s *session) queuedBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sendBytes
}

// dropped is the number of envelopes read from the session that were not
// routed (each counted in the relay's dropped_total under its reason).
func (s *session) dropped() uint64 {
	// in is counted first: reading it last keeps in >= routed + pings.
	routed, pings := s.routedIn.Load(), s.pingsIn.Load()
	in := s.msgsIn.Load()
	return in - min(in, routed+pings) + s.otherDrops.Load()
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
				// Waits up to closeGrace for the client's close frame.
				s.conn.Close(wsframe.StatusCode(code), reason, closeGrace)
				close(done)
			}()
			t := time.NewTimer(closeGrace + closeGrace/2)
			defer t.Stop()
			select {
			case <-done:
			case <-t.C:
				// A write stuck on a stuck peer holds up the close
				// frame; closing the socket tears everything down.
				s.conn.CloseNow()
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
	defer close(s.done)
	s.log.Info("session connected", "remote", s.remote)
	// Shutdown gives up on sessions by cancelling the relay context: that
	// must unblock the read.
	stop := context.AfterFunc(s.r.ctx, func() { s.conn.CloseNow() })
	defer stop()
	s.startSending()
	s.mu.Lock()
	s.pingTimer = time.AfterFunc(s.r.opts.PingInterval/2, s.pingCheck)
	s.mu.Unlock()
	s.readLoop()
	s.r.unregister(s)
	if s.r.cl != nil && s.token != "" {
		s.r.cl.release(s.key, s.token)
	}
	s.close(websocket.StatusNormalClosure, "")
	s.cancel()
	s.mu.Lock()
	s.pingTimer.Stop()
	s.mu.Unlock()
	s.stopSending()
	<-s.sendDone
	s.log.Info("session disconnected")
}

// touch records a sign of life from the client.
func (s *session) touch() { s.frames.Add(1) }

// readLoop reads frames and routes them until the connection fails.
func (s *session) readLoop() {
	var fl flusher
	defer fl.flush()
	for {
		if len(fl.held) > 0 && !s.conn.MessageBuffered() {
			fl.flush()
		}
		typ, b, err := s.conn.ReadMessage(nil)
		if err != nil {
			if errors.Is(err, wsframe.ErrMessageTooBig) {
				s.r.counters.drop(dropTooBig)
				s.log.Info("frame over the size limit, closing", "limit", s.r.opts.MaxEnvelopeSize)
			} else if st := wsframe.CloseStatus(err); st == -1 && s.ctx.Err() == nil {
				s.log.Debug("read failed", "err", err)
			}
			return
		}
		s.touch()
		if typ != wsframe.OpBinary {
			s.r.counters.drop(dropNotBinary)
			s.otherDrops.Add(1)
			continue
		}
		s.r.handleFrame(s, b, &fl)
	}
}

// sendLoop is the only writer of envelopes. It drains the send queue and,
// when woken, the store, in order: the envelopes in the queue are older than
// those stored while spilled. Writes go to the connection's buffer; the loop
// flushes when the queue runs dry (and every flushBytes), so a burst of
// envelopes costs one write syscall, not one each. It writes first (taken
// from the store by startSending) before anything else.
//
// It returns when the session ends (then finish runs), or as soon as it has
// nothing to send (pause; then deliverFrom writes, or starts another).
//
// Envelopes written but not flushed when the connection fails are put back
// in the store with those not written: delivery is at least once, and a
// client may see an envelope twice after a reconnect.
func (s *session) sendLoop(first []Message) {
	if leftover, idle := s.sendRun(first); !idle {
		s.finish(leftover)
	}
}

// sendRun is sendLoop until it returns: idle when it gave the sender role
// back, otherwise with the envelopes taken but not delivered.
func (s *session) sendRun(first []Message) (leftover []Message, idle bool) {
	if s.ctx.Err() != nil {
		// Closed before it started (a cluster claim lost, a direct write
		// failed): write nothing.
		return append(s.takeUnflushed(), first...), false
	}
	if s.prev != nil {
		// The replaced session puts its unsent envelopes back in the store
		// first; only then is the store in order.
		select {
		case <-s.prev.sendDone:
		case <-s.ctx.Done():
			return first, false
		}
		s.prev = nil
	}
	for i, m := range first {
		if err := s.write(m); err != nil {
			return append(s.takeUnflushed(), first[i+1:]...), false
		}
	}
	// Flushed behind what deliverFrom may have left in the connection's
	// buffer (the socket did not take it all).
	if err := s.flush(); err != nil {
		return s.takeUnflushed(), false
	}
	send := s.queue()
	for {
		if s.pause() {
			return nil, true
		}
		select {
		case <-s.ctx.Done():
			return s.takeUnflushed(), false
		case m := <-send:
			s.took(m)
			var err error
			if leftover, err = s.writeQueue(m, send); err != nil {
				return leftover, false
			}
		case <-s.wakeup:
			var err error
			if leftover, err = s.drain(); err != nil {
				return leftover, false
			}
			// drain may have met a queue made after the wake-up.
			send = s.queue()
		}
	}
}

// writeQueue writes m and whatever else is queued, then flushes. It
// returns the envelopes taken but not delivered when a write fails.
func (s *session) writeQueue(m Message, send chan Message) ([]Message, error) {
	for {
		if err := s.write(m); err != nil {
			return s.takeUnflushed(), err
		}
		select {
		case m = <-send:
			s.took(m)
			continue
		default:
		}
		if err := s.flush(); err != nil {
			return s.takeUnflushed(), err
		}
		return nil, nil
	}
}

// drain writes the send queue, then the store, until both are empty, and
// then clears spilled. It returns the envelopes taken but not delivered
// when a write fails.
//
// The queue is looked up on every pass: the first delivery to a live
// session makes it, and that may happen while drain waits for the store.
func (s *session) drain() ([]Message, error) {
	for {
		send := s.queue()
		for done := false; !done; {
			select {
			case m := <-send:
				s.took(m)
				if err := s.write(m); err != nil {
					return s.takeUnflushed(), err
				}
			default:
				done = true
			}
		}
		msgs, err := s.r.pop(s.key, popBatch)
		if err != nil {
			s.log.Warn("store pop failed, retrying", "err", err)
			time.AfterFunc(time.Second, s.wake)
			return s.flushOrLeftover()
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
			return s.flushOrLeftover()
		}
		for i, m := range msgs {
			if err := s.write(m); err != nil {
				return append(s.takeUnflushed(), msgs[i+1:]...), err
			}
		}
	}
}

func (s *session) flushOrLeftover() ([]Message, error) {
	if err := s.flush(); err != nil {
		return s.takeUnflushed(), err
	}
	return nil, nil
}

// write puts one envelope in the connection's write buffer (every write to
// the network has the deadline WriteTimeout), flushing every flushBytes. A
// failed write closes the session.
func (s *session) write(m Message) error {
	if err := s.buffer(m); err != nil {
		return err
	}
	if s.unflushedBytes >= flushBytes {
		return s.flush()
	}
	return nil
}

// buffer is write without the flush.
func (s *session) buffer(m Message) error {
	s.unflushed = append(s.unflushed, m)
	s.unflushedBytes += len(m.Data)
	if err := s.conn.WriteMessage(wsframe.OpBinary, m.Data); err != nil {
		if errors.Is(err, wsframe.ErrClosed) && len(s.unflushed) > 1 {
			// The session is closing (replaced, revoked): our close frame
			// went out behind, and flushed, what was buffered. Only m is
			// unsent; putting the others back would deliver them twice.
			sent := len(s.unflushed) - 1
			s.r.counters.msgsOut.Add(uint64(sent))
			s.r.counters.bytesOut.Add(uint64(s.unflushedBytes - len(m.Data)))
			clear(s.unflushed[:sent])
			s.unflushed[0] = m
			s.unflushed, s.unflushedBytes = s.unflushed[:1], len(m.Data)
		}
		return s.writeFailed(err)
	}
	return nil
}

// flush writes the connection's buffer out and counts what it delivered.
func (s *session) flush() error {
	if len(s.unflushed) == 0 {
		return nil
	}
	if err := s.conn.Flush(); err != nil {
		return s.writeFailed(err)
	}
	s.flushed()
	return nil
}

// flushed counts what a flush delivered.
func (s *session) flushed() {
	s.r.counters.msgsOut.Add(uint64(len(s.unflushed)))
	s.r.counters.bytesOut.Add(uint64(s.unflushedBytes))
	s.msgsOut.Add(uint64(len(s.unflushed)))
	s.bytesOut.Add(uint64(s.unflushedBytes))
	clear(s.unflushed)
	s.unflushed, s.unflushedBytes = s.unflushed[:0], 0
	if cap(s.unflushed) > 1024 {
		s.unflushed = nil
	}
}

func (s *session) writeFailed(err error) error {
	if s.ctx.Err() == nil {
		s.log.Info("write failed, closing", "err", err)
	}
	s.kill()
	return err
}

// takeUnflushed returns the envelopes written but not flushed, which the
// client may not have received.
func (s *session) takeUnflushed() []Message {
	out := s.unflushed
	s.unflushed, s.unflushedBytes = nil, 0
	return out
}

// finish runs once when the session ends, by its send loop or by
// stopSending: from now on deliver goes to the store, and what was taken
// but not written goes back to the front of the store.
func (s *session) finish(leftover []Message) {
	defer close(s.sendDone)
	s.mu.Lock()
	s.closed = true
	send := s.send
	s.mu.Unlock()
	for done := false; !done; {
		select {
		case m := <-send:
			s.took(m)
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
	} else if len(leftover) > 0 && s.r.cl != nil {
		// The session may live on another instance now.
		s.r.cl.wake(s.key)
	}
}

// pingCheck runs on pingTimer every PingInterval/2: after two checks in a
// row without a frame (the client silent for PingInterval) it pings, and
// when nothing at all (a pong or anything else) comes back within
// PingTimeout it closes the session. A timer instead of a goroutine per
// session: idle sessions are most sessions.
func (s *session) pingCheck() {
	if s.ctx.Err() != nil {
		return
	}
	interval, timeout := s.r.opts.PingInterval, s.r.opts.PingTimeout
	n := s.frames.Load()
	next := interval / 2
	switch {
	case !s.pingSent.IsZero() && n == s.pingSeen:
		wait := time.Until(s.pingSent.Add(timeout))
		if wait <= 0 {
			s.log.Info("ping unanswered, closing", "timeout", timeout)
			s.kill()
			return
		}
		next = wait
	case !s.pingSent.IsZero() || n != s.seen:
		s.pingSent, s.seen, s.quiet = time.Time{}, n, 0
	default:
		s.quiet++
		if s.quiet < 2 {
			break
		}
		if err := s.conn.Ping(); err != nil {
			if s.ctx.Err() == nil {
				s.log.Info("ping failed, closing", "err", err)
				s.kill()
			}
			return
		}
		s.pingSent, s.pingSeen, next = time.Now(), n, timeout
	}
	s.mu.Lock()
	if s.sender == senderStopped && !s.sendUsed && len(s.send) == 0 {
		// Owned by the sender role, which nobody holds now.
		s.send, s.sendBytes = nil, 0
		s.unflushed = nil
	}
	s.sendUsed = false
	if s.ctx.Err() == nil {
		s.pingTimer.Reset(next)
	}
	s.mu.Unlock()
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
	ip := r.clientIP(req)
	if p := r.policy.Load(); ip.IsValid() && !p.fromNetwork(key.Twin, ip) {
		r.counters.refuse(refuseNetwork)
		http.Error(w, msgNetworkDenied, http.StatusForbidden)
		return
	}
	addr := r.clientAddr(req)
	if status, msg := r.admit(key, addr); status != 0 {
		http.Error(w, msg, status)
		return
	}
	// In a cluster the session is claimed in Redis: the twin's sessions
	// are counted over all instances, and the latest claim owns it.
	var token, prev string
	claimed := false
	if r.cl != nil {
		token = r.cl.newToken()
		r.cl.addPending(token)
		defer r.cl.endPending(token)
		var status int
		var msg string
		var err error
		prev, status, msg, err = r.cl.claim(key, token)
		if status != 0 {
			r.leave(key.Twin, addr, true)
			r.conns.Done()
			http.Error(w, msg, status)
			return
		}
		claimed = err == nil
	}
	var s *session
	conn, err := wsframe.Upgrade(w, req, &wsframe.Options{
		ReadLimit:    r.opts.MaxEnvelopeSize,
		WriteTimeout: r.opts.WriteTimeout,
		OnPong:       func() { s.touch() },
	})
	if err != nil {
		r.log.Debug("websocket upgrade failed", "remote", req.RemoteAddr, "err", err)
		if r.cl != nil {
			r.cl.release(key, token)
		}
		r.leave(key.Twin, addr, true)
		r.conns.Done()
		return
	}
	switch {
	case claimed && prev != "":
		// The connection we took the session from hands over (its
		// unsent envelopes back in the store) before we subscribe.
		r.cl.takeoverFrom(key, prev)
	case r.cl != nil && !claimed && r.lookup(key) == nil:
		// Without Redis: whoever is subscribed to the session hands over.
		r.cl.takeover(key)
	}
	s = r.newSession(key, conn, req.RemoteAddr)
	s.addr = addr
	s.ip = ip
	s.token = token
	if !r.register(s) {
		if r.cl != nil && r.cl.cancelled(token) {
			// A later connection claimed the session meanwhile.
			r.counters.replaced.Add(1)
			conn.Close(wsframe.StatusCode(statusReplaced), "replaced by a newer connection", closeGrace)
		} else {
			conn.Close(wsframe.StatusCode(statusGoingAway), "relay shutting down", closeGrace)
		}
		s.cancel()
		if r.cl != nil {
			r.cl.release(key, token)
		}
		r.leave(key.Twin, addr, true)
		r.conns.Done()
		return
	}
	r.counters.connects.Add(1)
	// The session runs on its own goroutine and the handler returns: the
	// connection is hijacked, and net/http's per-connection state (request,
	// buffers, a deep stack) need not live as long as the session.
	go func() {
		defer r.conns.Done()
		s.serve()
		r.leave(0, addr, false)
	}()
}

// admit lets a new session of key from addr in, or answers the HTTP status
// and reason to refuse it with (the refusal counted). A session id that is
// live is always let in: its new connection replaces the old one. On
// success the caller owns a place in r.conns, r.joining and r.perAddr.
func (r *Relay) admit(key SessionKey, addr string) (int, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	live := r.sessions[key.Twin]
	_, replaces := live[key.SID]
	switch {
	case r.closing:
		return http.StatusServiceUnavailable, "relay shutting down"
	case !replaces && len(live)+r.joining[key.Twin] >= r.opts.MaxSessionsPerTwin:
		r.counters.refuse(refuseTwinSessions)
		return http.StatusTooManyRequests, "too many sessions of this twin"
	case r.perAddr[addr] >= r.opts.MaxSessionsPerAddress:
		r.counters.refuse(refuseAddrSessions)
		return http.StatusTooManyRequests, "too many sessions from this address"
	}
	r.joining[key.Twin]++
	r.perAddr[addr]++
	r.conns.Add(1)
	return 0, ""
}

// leave gives back what admit took: the place in r.joining (when joining:
// the session was not registered) and the one in r.perAddr.
func (r *Relay) leave(twin uint32, addr string, joining bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if joining {
		r.unjoin(twin)
	}
	if r.perAddr[addr]--; r.perAddr[addr] <= 0 {
		delete(r.perAddr, addr)
	}
}

// unjoin ends twin's place in r.joining; r.mu is held.
func (r *Relay) unjoin(twin uint32) {
	if r.joining[twin]--; r.joining[twin] <= 0 {
		delete(r.joining, twin)
	}
}

// clientAddr is the address a connection counts against: the remote
// address, or, when that is a trusted proxy, the nearest address in
// X-Forwarded-For that is not one. An IPv6 address counts as its /64 (one
// host usually holds a whole /64).
func (r *Relay) clientAddr(req *http.Request) string {
	addr := r.clientIP(req)
	if !addr.IsValid() {
		return req.RemoteAddr
	}
	if addr.Is6() {
		return netip.PrefixFrom(addr, 64).Masked().String()
	}
	return addr.String()
}

// clientIP is the client's address: the remote address, or, when that is
// a trusted proxy, the nearest address in X-Forwarded-For that is not one.
// It is not valid when the remote address is not an IP address.
func (r *Relay) clientIP(req *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if r.trusted(addr) {
		addr = r.forwardedFor(req, addr)
	}
	return addr
}

// forwardedFor walks X-Forwarded-For from the nearest hop (proxy, a
// trusted one) and returns the first address that is not trusted; at a
// hop that is not an address it stops at the last trusted one.
func (r *Relay) forwardedFor(req *http.Request, proxy netip.Addr) netip.Addr {
	hops := req.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		list := strings.Split(hops[i], ",")
		for j := len(list) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(list[j]))
			if err != nil {
				return proxy
			}
			proxy = a.Unmap()
			if !r.trusted(proxy) {
				return proxy
			}
		}
	}
	return proxy
}

func (r *Relay) trusted(a netip.Addr) bool {
	for _, p := range r.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// register makes s the live session of its key, replacing (and closing) the
// previous one. It fails once Shutdown has begun, or in a cluster when a
// later connection claimed the session while s was pending.
func (r *Relay) register(s *session) bool {
	r.mu.Lock()
	if r.closing || (r.cl != nil && s.token != "" && r.cl.cancelled(s.token)) {
		r.mu.Unlock()
		return false
	}
	r.unjoin(s.key.Twin)
	m := r.sessions[s.key.Twin]
	if m == nil {
		m = make(map[string]*session)
		r.sessions[s.key.Twin] = m
	}
	old := m[s.key.SID]
	m[s.key.SID] = s
	if old == nil {
		r.nsess++
		if r.cl != nil {
			r.cl.subscribe(s.key)
			if len(m) == 1 {
				r.cl.subscribeTwin(s.key.Twin)
			}
		}
	}
	r.mu.Unlock()
	if old == nil && r.cl != nil {
		// Subscribed before the store is drained (newSession woke the
		// send loop, which starts after this); drained once more when
		// the interest has spread over the NATS routes.
		r.cl.flush()
		time.AfterFunc(clusterSettle, s.wake)
	}
	if old != nil {
		s.prev = old
		r.counters.replaced.Add(1)
		old.log.Info("session replaced", "remote", s.remote)
		// The same twin's key signed both connections: tell the old one
		// where the new one comes from (two peers sharing a key?).
		old.close(statusReplaced, "replaced by another connection of this twin and session from "+s.addr)
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
	if r.cl != nil {
		r.cl.unsubscribe(s.key)
		if len(m) == 0 {
			r.cl.unsubscribeTwin(s.key.Twin)
		}
	}
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
			n += s.queued()
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
		if r.cl != nil && s.isClosed() {
			r.cl.wake(k) // its successor may be on another instance
		}
	} else if r.cl != nil {
		r.cl.wake(k)
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
