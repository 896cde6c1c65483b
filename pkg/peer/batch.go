package peer

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-message Redis work shares round trips. One loop (redisLoop) owns
// every Redis command that does not block: the moves of popLoop while its
// queue has messages, bounded pushes, and the bookkeeping of handled
// messages. It sends what is queued as one pipeline, then what was
// queued meanwhile, and so on: nothing waits to fill a batch, so an idle
// peer sends each op at once and a busy one many per round trip (the
// write coalescing of a send loop that flushes when its queue runs dry).
// Ops run in the order they were queued, which pending.go relies on. A
// batch that persists a request is a MULTI/EXEC transaction, so the HSET
// of the request and the LREM of the message it came from happen
// together or not at all.
//
//   - Moves (moveScript) and pushes have callers waiting for the result.
//   - Bookkeeping nobody waits for (LREM of handled messages, HSET/HDEL of
//     the persisted pending requests, pending.go) is retried with the
//     next batches when a round trip fails, a few times.
//
// Blocking pops (BLMOVE, when a queue ran dry) stay on popLoop's own
// connection.

const (
	// maxBatch bounds the ops of one pipeline.
	maxBatch = 256
	// popBatch bounds how many messages popLoop moves to a processing
	// list in one op.
	popBatch = 64
	// writeTries is how many failed round trips a bookkeeping op is sent
	// in before it is given up.
	writeTries = 5
)

// redisOp is one op for redisLoop; exactly one of push, move and write is
// set. done is closed once a push or move has its result.
type redisOp struct {
	push  *pushOp
	move  *moveOp
	write *writeOp
	tries int // failed round trips of a write
	done  chan struct{}
}

// pushOp is one bounded push; runBatch sets n and err. A push of
// pushAsync has no done channel: runBatch settles it instead.
type pushOp struct {
	ctx   context.Context
	queue string
	b     []byte
	n     int64 // new length of the list, -1 when it was full
	err   error
	cmd   *redis.IntCmd
	// With after joined (withAfter): pushScript's command and arguments
	// instead of cmd.
	script     *redis.Cmd
	scriptArgs []any
	// For pushAsync: after is queued once the push succeeded; failed runs
	// on a goroutine of its own when it did not (full, or Redis failed).
	after  *writeOp
	failed func(error)
	// withAfter is set when after's HDELs (and LREM) went in the same
	// transaction as the push: the answer on ret and the end of its
	// pending entry, or of its request's processing-list entry, happen
	// together (pending.go).
	withAfter bool
	landed    func() // if set, called once the push succeeded
}

// moveOp moves up to max messages from queue to processing; runBatch sets
// msgs (oldest first) and err.
type moveOp struct {
	ctx               context.Context
	queue, processing string
	max               int
	msgs              []string
	err               error
	cmd               *redis.Cmd
}

// writeOp is bookkeeping. Each set field adds a command.
type writeOp struct {
	processing string   // LREM raw from this processing list
	raw        string   //
	persist    string   // HSET the pending request with this uid (pending.go)
	forget     []string // HDEL these fields of PendingHash
}

// combiner runs the ops of concurrent callers in batches, one batch at a
// time, on the callers' own goroutines. The zero value is ready to use.
type combiner[T any] struct {
	mu    sync.Mutex
	busy  bool       // a batch is running
	queue []*slot[T] // waiting for the next batch; queue[0] will lead it
}

type slot[T any] struct {
	op   T
	turn chan bool // buffered 1: true to lead the next batch, false when done
}

// do returns once run has been called with a batch holding op. The caller
// that finds the combiner idle runs the batch; others wait, and the first
// of them runs the next one, so every caller runs at most one batch.
func (c *combiner[T]) do(op T, run func([]T)) {
	me := &slot[T]{op: op, turn: make(chan bool, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, me)
	if c.busy {
		c.mu.Unlock()
		if !<-me.turn {
			return // a leader ran it
		}
		c.mu.Lock()
	}
	// me is queue[0]: the queue was empty when idle, and a leader hands
	// on to queue[0].
	c.busy = true
	n := min(len(c.queue), maxBatch)
	batch := make([]*slot[T], n)
	copy(batch, c.queue)
	c.queue = append(c.queue[:0:0], c.queue[n:]...)
	c.mu.Unlock()

	ops := make([]T, n)
	for i, s := range batch {
		ops[i] = s.op
	}
	run(ops)

	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].turn <- true
	} else {
		c.busy = false
	}
	c.mu.Unlock()
	for _, s := range batch[1:] {
		s.turn <- false
	}
}

// batchers is redisLoop's queue. Run starts it before the loops that use
// it and stops it after those returned.
type batchers struct {
	ops     chan *redisOp
	stop    chan struct{} // closed to stop redisLoop
	stopped chan struct{} // closed once redisLoop returned
	conn    ownConn       // redisLoop's connection
	later   laterFinishes // finishLater's queue (pending.go)
	// failing is set while redisLoop's round trips fail (the last one
	// was lost): finishLater's timer then waits for Redis.
	failing atomic.Bool
}

// ownConn is a Redis connection kept by one goroutine for its round
// trips, which come one after the other (redisLoop, a popLoop). Taken
// from the client's pool for each round trip instead, a connection is
// health-checked every time (go-redis peeks at the socket: a syscall and
// a few allocations). A round trip that fails other than with a reply
// from Redis gives the connection up; the next takes a new one.
type ownConn struct {
	rdb *redis.Client
	c   *redis.Conn
}

// get returns the connection, taking one from the pool if there is none.
func (o *ownConn) get() *redis.Conn {
	if o.c == nil {
		o.c = o.rdb.Conn()
	}
	return o.c
}

// check gives the connection up after a round trip that failed with err,
// unless err is a reply from Redis (which leaves the connection usable).
func (o *ownConn) check(err error) {
	var rerr redis.Error
	if err == nil || errors.As(err, &rerr) {
		return
	}
	o.close()
}

func (o *ownConn) close() {
	if o.c != nil {
		o.c.Close()
		o.c = nil
	}
}

// errStopped means the op came after redisLoop stopped.
var errStopped = errors.New("peer: stopped")

// startBatchers starts redisLoop. The returned function stops it, after
// it has run what is queued, and waits for it; it may be called more
// than once.
func (p *Peer) startBatchers() (stop func()) {
	b := &batchers{
		ops:     make(chan *redisOp, 16*maxBatch),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		conn:    ownConn{rdb: p.rdb},
	}
	p.batch = b
	go func() {
		defer close(b.stopped)
		defer b.conn.close()
		p.redisLoop(b)
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(b.stop) })
		<-b.stopped
	}
}

// submit queues op and, for a push or move, waits for its result. It
// reports false when redisLoop has stopped.
func (p *Peer) submit(op *redisOp) bool {
	select {
	case p.batch.ops <- op:
	case <-p.batch.stopped:
		return false
	}
	if op.done != nil {
		<-op.done
	}
	return true
}

// push pushes b onto queue unless queue holds QueueLimit entries: the new
// list length, or -1 when the list is full. Concurrent pushes share round
// trips.
func (p *Peer) push(ctx context.Context, queue string, b []byte) (int64, error) {
	op := &pushOp{ctx: ctx, queue: queue, b: b}
	if !p.submit(&redisOp{push: op, done: make(chan struct{})}) {
		return 0, errStopped
	}
	return op.n, op.err
}

// pushAsync pushes b onto queue like pushBounded, without waiting: an
// incoming envelope is handed on as soon as its push is queued. Once the
// push succeeded, after (if not nil) is queued behind it. When it did not,
// failed runs on a goroutine of its own: a Redis failure is retried first
// as pushBounded retries it, until deadline (after then follows a late
// success); a full queue is reported at once. failed is given the error,
// and after is queued once failed returned, so bookkeeping that must
// follow the push (pending.go) follows it either way.
func (p *Peer) pushAsync(ctx context.Context, queue string, b []byte, deadline time.Time, after *writeOp, failed func(error)) {
	p.pushAsyncLanded(ctx, queue, b, deadline, after, failed, nil)
}

// pushAsyncLanded is pushAsync that also calls landed (if not nil) once
// the push succeeded.
func (p *Peer) pushAsyncLanded(ctx context.Context, queue string, b []byte, deadline time.Time, after *writeOp, failed func(error), landed func()) {
	op := &pushOp{ctx: context.Background(), queue: queue, b: b, after: after, landed: landed}
	op.failed = func(err error) {
		if !errors.Is(err, errQueueFull) {
			err = p.pushBounded(ctx, queue, b, deadline)
		}
		if err != nil {
			failed(err)
		} else if landed != nil {
			landed()
		}
		if after != nil {
			p.write(*after)
		}
	}
	if !p.submit(&redisOp{push: op}) {
		go op.failed(errStopped)
	}
}

// settle finishes a push of pushAsync: it returns the bookkeeping to
// queue next (its after), or starts its failed.
func (p *Peer) settle(u *pushOp) *redisOp {
	switch {
	case u.err != nil:
		go u.failed(u.err)
	case u.n < 0:
		go u.failed(fmt.Errorf("%s: %w (%d entries)", u.queue, errQueueFull, p.opts.QueueLimit))
	default:
		if u.landed != nil {
			u.landed()
		}
		if u.after != nil && !u.withAfter {
			return &redisOp{write: u.after}
		}
		if u.withAfter && u.after.processing != "" {
			p.release(u.after.processing, u.after.raw)
		}
	}
	return nil
}

// joinsPush reports whether w can go in the transaction of the push it
// follows: it persists nothing, and deletes PendingHash fields or removes
// the message the pushed answer belongs to from its processing list
// (finishLater).
func joinsPush(w *writeOp) bool {
	return w != nil && w.persist == "" && (len(w.forget) > 0 || w.processing != "")
}

// moveBatch moves up to n messages from queue to processing without
// blocking, and returns them oldest first.
func (p *Peer) moveBatch(ctx context.Context, queue, processing string, n int) ([]string, error) {
	op := &moveOp{ctx: ctx, queue: queue, processing: processing, max: n}
	if !p.submit(&redisOp{move: op, done: make(chan struct{})}) {
		return nil, errStopped
	}
	if op.err != nil {
		return nil, fmt.Errorf("move from %s: %w", queue, op.err)
	}
	return op.msgs, nil
}

// write queues bookkeeping. It blocks while the queue is full (Redis is
// slow or down); after the peer stopped the op is lost, which only means
// a handled message is handled again on the next start.
func (p *Peer) write(op writeOp) {
	if !p.submit(&redisOp{write: &op}) {
		p.log.Warn("bookkeeping after stop not written", "processing", op.processing, "persist", op.persist, "forget", op.forget)
		if op.processing != "" {
			p.release(op.processing, op.raw)
		}
	}
}

// finish removes raw from a processing list and then gives up the hold on
// it. When persist is a uid, the pending request is persisted in the same
// transaction.
func (p *Peer) finish(processing, raw, persist string) {
	p.write(writeOp{processing: processing, raw: raw, persist: persist})
}

// redisLoop runs the queued ops in batches until stop is closed and the
// queue is empty. Writes of a failed round trip go first in the next
// batch, after a pause; so do the writes that follow settled pushes
// (pushAsync), without one.
func (p *Peer) redisLoop(b *batchers) {
	var retry []*redisOp
	// Writes that may wait (lazyWrite) for the next batch, or until
	// lazyTimer fires.
	var lazy []*redisOp
	lazyTimer := time.NewTimer(time.Hour)
	lazyTimer.Stop()
	defer lazyTimer.Stop()
	for {
		batch := retry
		flush := false
		if len(batch) == 0 {
			select {
			case op := <-b.ops:
				batch = append(batch, op)
			case <-lazyTimer.C:
				flush = true
			case <-b.stop:
				select {
				case op := <-b.ops:
					batch = append(batch, op)
				default:
					if len(lazy) == 0 {
						return
					}
					flush = true
				}
			}
		}
	more:
		for len(batch) < maxBatch {
			select {
			case op := <-b.ops:
				batch = append(batch, op)
			default:
				break more
			}
		}
		if !flush && len(lazy)+len(batch) < maxBatch && allLazy(batch) {
			if len(lazy) == 0 {
				lazyTimer.Reset(finishDelay)
			}
			lazy = append(lazy, batch...)
			continue
		}
		if len(lazy) > 0 {
			batch = append(lazy, batch...)
			lazy = nil
			lazyTimer.Stop()
		}
		var next []*redisOp
		retry, next = p.runBatch(batch)
		if len(retry) > 0 {
			time.Sleep(time.Duration(min(retry[0].tries, 10)) * 100 * time.Millisecond)
		}
		retry = append(retry, next...)
	}
}

// lazyWrite reports whether op may wait for the next batch (or up to
// finishDelay): the LREM of a service's answer already sent. Should the
// peer die before it, the answer is sent again after the restart, and
// the caller's peer drops it as a duplicate; meanwhile the message stays
// held (processing.go). At low load it then goes with the push of the
// next request instead of a round trip of its own.
func lazyWrite(op *redisOp) bool {
	w := op.write
	return w != nil && w.processing == ReplyProcessing && w.persist == "" && len(w.forget) == 0 && op.tries == 0
}

func allLazy(ops []*redisOp) bool {
	for _, op := range ops {
		if !lazyWrite(op) {
			return false
		}
	}
	return true
}

// moveScript moves up to ARGV[1] messages from the right of KEYS[1] to the
// left of KEYS[2], like that many LMOVEs, and returns them oldest first.
// It stops at the first miss, so an empty queue costs one cheap call. It
// is called by its hash (moveSHA), and sent whole only when Redis does
// not know it.
const moveScript = `
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out
`

var moveSHA = func() string {
	h := sha1.Sum([]byte(moveScript))
	return hex.EncodeToString(h[:])
}()

// pushScript pushes ARGV[1] onto KEYS[1] and returns the new length, as
// LPUSH does, and with it removes ARGV[2] (unless "") from the tail side of
// KEYS[2] and deletes the fields ARGV[3:] of KEYS[3] (PendingHash): the
// push of an answer and the bookkeeping that must go with it (joinsPush),
// as one command where MULTI/EXEC takes two more. Called by its hash like
// moveScript.
const pushScript = `
local n = redis.call('LPUSH', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('LREM', KEYS[2], -1, ARGV[2]) end
if #ARGV > 2 then redis.call('HDEL', KEYS[3], unpack(ARGV, 3)) end
return n
`

var pushSHA = func() string {
	h := sha1.Sum([]byte(pushScript))
	return hex.EncodeToString(h[:])
}()

// pushKeys are pushScript's keys for u.
func pushKeys(u *pushOp) []string {
	proc := u.after.processing
	if proc == "" {
		proc = LocalProcessing // not touched
	}
	return []string{u.queue, proc, PendingHash}
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// runBatch runs ops as one pipeline, sets the results of pushes and
// moves, and returns the writes to send again (the round trip failed and
// they have tries left) and the writes that follow pushes of pushAsync
// that succeeded. A push or move whose context ended is not sent.
func (p *Peer) runBatch(ops []*redisOp) (retry, next []*redisOp) {
	// Not cancelled with any one caller: go-redis bounds the round trip
	// with its read and write timeouts.
	ctx := context.Background()
	conn := &p.batch.conn
	rdb := conn.get()
	// A transaction only when the batch persists a request: then the HSET
	// and the LREM of the message it came from must happen together. The
	// push of an answer and the HDEL of its pending entry, or the LREM of
	// its request (finishLater), are one script (pushScript).
	tx := rdb.Pipeline()
	for _, op := range ops {
		if op.write != nil && op.write.persist != "" {
			tx = rdb.TxPipeline()
			break
		}
	}
	var hset []any
	var hdel []string
	for _, op := range ops {
		switch {
		case op.move != nil:
			m := op.move
			if m.err = m.ctx.Err(); m.err == nil {
				m.cmd = tx.EvalSha(ctx, moveSHA, []string{m.queue, m.processing}, m.max)
			}
		case op.push != nil:
			u := op.push
			if u.err = u.ctx.Err(); u.err == nil {
				if joinsPush(u.after) {
					// One script, atomic as a transaction. Fails with the
					// push if the round trip is lost; the retry of the
					// push queues after again (pushAsync).
					u.scriptArgs = append([]any{u.b, u.after.raw}, anys(u.after.forget)...)
					u.script = tx.EvalSha(ctx, pushSHA, pushKeys(u), u.scriptArgs...)
					u.withAfter = true
				} else {
					u.cmd = tx.LPush(ctx, u.queue, u.b)
				}
			}
		case op.write.persist != "":
			// Built now, not when queued: pending.go relies on it.
			hset = append(hset, p.pendingFields(op.write.persist)...)
		}
		if op.write != nil {
			hdel = append(hdel, op.write.forget...)
		}
	}
	// Within a batch no field is both written and deleted: an HDEL is
	// queued only after the HSET of its field was built (pending.go).
	if len(hset) > 0 {
		tx.HSet(ctx, PendingHash, hset...)
	}
	for _, op := range ops {
		if op.write != nil && op.write.processing != "" {
			// From the tail: moves put messages at the head, so the
			// oldest, usually the ones finished first, are at the tail.
			tx.LRem(ctx, op.write.processing, -1, op.write.raw)
		}
	}
	if len(hdel) > 0 {
		tx.HDel(ctx, PendingHash, hdel...)
	}
	var err error
	if tx.Len() > 0 {
		_, err = tx.Exec(ctx)
		conn.check(err)
	}
	// A reply error (a list of the wrong type) belongs to its command;
	// any other error lost the whole round trip.
	var rerr redis.Error
	lost := err != nil && !errors.As(err, &rerr)
	if tx.Len() > 0 {
		p.batch.failing.Store(lost)
	}
	var over []*redisOp
	gaveUp := 0
	for _, op := range ops {
		switch {
		case op.move != nil:
			m := op.move
			if m.cmd != nil {
				m.msgs, m.err = m.cmd.StringSlice()
				if m.err != nil && redis.HasErrorPrefix(m.err, "NOSCRIPT") {
					// Redis restarted since it last ran the script: EVAL
					// sends it again (and Redis keeps it from then on).
					m.msgs, m.err = conn.get().Eval(ctx, moveScript, []string{m.queue, m.processing}, m.max).StringSlice()
					conn.check(m.err)
				}
				if errors.Is(m.err, redis.Nil) {
					m.msgs, m.err = nil, nil
				}
			}
			close(op.done)
		case op.push != nil:
			u := op.push
			if u.script != nil {
				u.n, u.err = u.script.Int64()
				if u.err != nil && redis.HasErrorPrefix(u.err, "NOSCRIPT") {
					// As for moves above.
					u.n, u.err = conn.get().Eval(ctx, pushScript, pushKeys(u), u.scriptArgs...).Int64()
					conn.check(u.err)
				}
			} else if u.cmd != nil {
				u.n, u.err = u.cmd.Result()
			}
			if u.cmd != nil || u.script != nil {
				if u.err == nil && u.n > p.opts.QueueLimit {
					over = append(over, op) // done after the take-back
					continue
				}
			}
			if op.done == nil {
				if w := p.settle(u); w != nil {
					next = append(next, w)
				}
				continue
			}
			close(op.done)
		case lost && op.tries+1 < writeTries:
			op.tries++
			retry = append(retry, op)
		default:
			// Sent, refused, or given up: no longer held either way. A
			// message given up stays in its processing list, and popLoop
			// handles it again (processing.go).
			if lost {
				gaveUp++
			}
			if op.write.processing != "" {
				p.release(op.write.processing, op.write.raw)
			}
		}
	}
	switch {
	case err == nil:
	case !lost && redis.HasErrorPrefix(err, "NOSCRIPT"):
		// Redis restarted or flushed its scripts: the moves above ran
		// again with EVAL. Normal, and not worth a line.
		p.log.Debug("redis lost its scripts; sent them again")
	case !lost:
		p.log.Error("redis refused a command", "err", err)
	case gaveUp > 0:
		p.log.Error("redis bookkeeping failed; handled messages stay in their processing list", "err", err, "ops", gaveUp)
	default:
		p.log.Warn("redis round trip failed", "err", err, "writes_to_retry", len(retry))
	}
	if len(over) > 0 {
		next = append(next, p.takeBack(over)...)
	}
	return retry, next
}

// takeBack takes back pushes that took their list past QueueLimit, with
// one round trip of LREMs, and closes their done (or settles them, for
// pushes of pushAsync, returning the writes that follow).
//
// The bound is kept without a script: LPUSH returns the new length, and a
// push over the bound is removed again with LREM. If a consumer popped
// the message in between, LREM finds nothing and the push counts as done:
// the message was delivered. So a list may hold more than QueueLimit
// entries only for that moment, no push is reported full yet delivered,
// and none is dropped unreported. Identical messages are interchangeable
// here: taking back a twin of ours leaves the same list.
func (p *Peer) takeBack(ops []*redisOp) (next []*redisOp) {
	ctx := context.Background()
	undo := make([]*redis.IntCmd, len(ops))
	_, err := p.batch.conn.get().Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, op := range ops {
			undo[i] = pipe.LRem(ctx, op.push.queue, 1, op.push.b)
		}
		return nil
	})
	p.batch.conn.check(err)
	for i, op := range ops {
		u := op.push
		removed, err := undo[i].Result()
		switch {
		case err == nil && removed == 1:
			u.n = -1 // taken back: the list was full
		case err == nil:
			// Popped before we could take it back: delivered.
		default:
			// Whether it is still there is unknown: report the error and
			// let the caller retry, at worst a duplicate delivery.
			u.err = fmt.Errorf("taking back a push over the bound: %w", err)
		}
		if op.done == nil {
			if w := p.settle(u); w != nil {
				next = append(next, w)
			}
			continue
		}
		close(op.done)
	}
	return next
}
