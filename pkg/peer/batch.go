package peer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-message Redis work shares round trips. Nothing waits to fill a
// batch: what is queued while one round trip is out goes in the next, so
// an idle peer sends each command at once and a busy one many per round
// trip (the write coalescing of a send loop that flushes when its queue
// runs dry).
//
//   - Bounded pushes, whose callers wait for the result, go through a
//     combiner: the caller that finds it idle runs the batch itself (no
//     goroutine handoff on the idle path), callers that come meanwhile
//     queue and the first of them runs the next batch. A batch is one
//     pipeline of LPUSHes (runPushes says how the bound is kept).
//   - Bookkeeping nobody waits for (LREM of handled messages, HSET/HDEL of
//     the persisted pending requests, pending.go) goes to writeLoop, one
//     pipeline per batch (MULTI/EXEC when it persists a request). Batches
//     run in the order they were queued, which pending.go relies on.

const (
	// maxBatch bounds the commands of one pipeline.
	maxBatch = 256 // also bounds the lists of one pushManyScript call
	// popBatch bounds how many messages popLoop moves to a processing
	// list in one round trip.
	popBatch = 64
)

// pushOp is one bounded push; runPushes sets n and err.
type pushOp struct {
	ctx   context.Context
	queue string
	b     []byte
	n     int64 // new length of the list, -1 when it was full
	err   error
}

// writeOp is bookkeeping for writeLoop. Each set field adds a command.
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

// batchers is writeLoop's queue. Run starts it before the loops that use
// it and stops it after those returned.
type batchers struct {
	writes  chan writeOp
	stop    chan struct{} // closed to stop writeLoop
	stopped chan struct{} // closed once writeLoop returned
}

// startBatchers starts writeLoop. The returned function stops it, after it
// has sent what is queued, and waits for it; it may be called more than
// once.
func (p *Peer) startBatchers() (stop func()) {
	b := &batchers{
		writes:  make(chan writeOp, 16*maxBatch),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	p.batch = b
	go func() {
		defer close(b.stopped)
		p.writeLoop(b)
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(b.stop) })
		<-b.stopped
	}
}

// push pushes b onto queue unless queue holds QueueLimit entries: the new
// list length, or -1 when the list is full. Concurrent pushes share round
// trips.
func (p *Peer) push(ctx context.Context, queue string, b []byte) (int64, error) {
	op := &pushOp{ctx: ctx, queue: queue, b: b}
	p.pushes.do(op, p.runPushes)
	return op.n, op.err
}

// runPushes sends ops in one pipeline of LPUSHes and sets the result of
// each. An op whose context ended is not sent.
//
// The bound is kept without a script: LPUSH returns the new length, and a
// push that took a list past QueueLimit is taken back with LREM (a second
// round trip, only then). If a consumer popped the message in between,
// LREM finds nothing and the push counts as done: the message was
// delivered. So a list may hold more than QueueLimit entries only for
// that moment, no push is reported full yet delivered, and none is
// dropped unreported. Identical messages are interchangeable here: taking
// back a twin of ours leaves the same list.
func (p *Peer) runPushes(ops []*pushOp) {
	ctx := context.Background() // bounded by go-redis's timeouts, not by one caller
	live := ops[:0:0]
	for _, op := range ops {
		if op.err = op.ctx.Err(); op.err == nil {
			live = append(live, op)
		}
	}
	if len(live) == 0 {
		return
	}
	// Each command carries its own error: Redis refusing one list (wrong
	// type) fails that push only; a lost connection fails them all.
	cmds := make([]*redis.IntCmd, len(live))
	p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, op := range live {
			cmds[i] = pipe.LPush(ctx, op.queue, op.b)
		}
		return nil
	})
	var over []int
	for i, op := range live {
		op.n, op.err = cmds[i].Result()
		if op.err == nil && op.n > p.opts.QueueLimit {
			over = append(over, i)
		}
	}
	if len(over) == 0 {
		return
	}
	undo := make([]*redis.IntCmd, len(over))
	p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for j, i := range over {
			undo[j] = pipe.LRem(ctx, live[i].queue, 1, live[i].b)
		}
		return nil
	})
	for j, i := range over {
		op := live[i]
		removed, uerr := undo[j].Result()
		switch {
		case uerr == nil && removed == 1:
			op.n = -1 // taken back: the list was full
		case uerr == nil:
			// Popped before we could take it back: delivered.
		default:
			// Whether it is still there is unknown: report the error and
			// let the caller retry, at worst a duplicate delivery.
			op.err = fmt.Errorf("taking back a push over the bound: %w", uerr)
		}
	}
}

// write queues bookkeeping for writeLoop. It blocks while the queue is
// full (Redis is slow or down); after the peer stopped the op is lost,
// which only means a handled message is handled again on the next start.
func (p *Peer) write(op writeOp) {
	select {
	case p.batch.writes <- op:
	case <-p.batch.stopped:
		p.log.Warn("bookkeeping after stop not written", "processing", op.processing, "persist", op.persist, "forget", op.forget)
		if op.processing != "" {
			p.release(op.processing, op.raw)
		}
	}
}

// writeLoop sends the queued bookkeeping until stop is closed, then what
// is still queued.
func (p *Peer) writeLoop(b *batchers) {
	for {
		var first writeOp
		select {
		case first = <-b.writes:
		case <-b.stop:
			select {
			case first = <-b.writes:
			default:
				return
			}
		}
		batch := []writeOp{first}
	more:
		for len(batch) < maxBatch {
			select {
			case op := <-b.writes:
				batch = append(batch, op)
			default:
				break more
			}
		}
		p.runWrites(batch)
	}
}

// runWrites sends ops in one pipeline, in a MULTI/EXEC when it persists a
// request, so the HSET of a request and the LREM of the message it came
// from happen together or not at all. A failed round trip is retried a
// few times; after that the messages stay in their processing list and
// are handled again (popLoop finds them unheld, or the next start does).
// Once the LREMs ran or were given up, their entries are no longer held.
func (p *Peer) runWrites(ops []writeOp) {
	defer func() {
		for _, op := range ops {
			if op.processing != "" {
				p.release(op.processing, op.raw)
			}
		}
	}()
	ctx := context.Background()
	tx := false
	for _, op := range ops {
		tx = tx || op.persist != ""
	}
	for i := 0; ; i++ {
		pipe := p.rdb.Pipeline()
		if tx {
			pipe = p.rdb.TxPipeline()
		}
		var hset []any
		var hdel []string
		for _, op := range ops {
			if op.persist != "" {
				hset = append(hset, p.pendingFields(op.persist)...)
			}
			hdel = append(hdel, op.forget...)
		}
		// Within a batch no field is both written and deleted: an HDEL is
		// queued only after the HSET of its field was built (pending.go).
		if len(hset) > 0 {
			pipe.HSet(ctx, PendingHash, hset...)
		}
		for _, op := range ops {
			if op.processing != "" {
				pipe.LRem(ctx, op.processing, 1, op.raw)
			}
		}
		if len(hdel) > 0 {
			pipe.HDel(ctx, PendingHash, hdel...)
		}
		if pipe.Len() == 0 {
			return
		}
		_, err := pipe.Exec(ctx)
		var rerr redis.Error
		if err == nil || errors.As(err, &rerr) {
			// Sent; a command Redis refused (wrong type) is not retried.
			if err != nil {
				p.log.Error("redis refused bookkeeping", "err", err)
			}
			return
		}
		if i == 4 {
			p.log.Error("redis bookkeeping failed; handled messages stay in their processing list", "err", err, "ops", len(ops))
			return
		}
		p.log.Warn("redis bookkeeping failed; retrying", "err", err)
		time.Sleep(time.Duration(i+1) * 100 * time.Millisecond)
	}
}

// finish removes raw from a processing list (through writeLoop) and then
// gives up the hold on it. When persist is a uid, the pending request is
// persisted in the same transaction.
func (p *Peer) finish(processing, raw, persist string) {
	p.write(writeOp{processing: processing, raw: raw, persist: persist})
}

// moveScript moves up to ARGV[1] messages from the right of KEYS[1] to the
// left of KEYS[2], like that many LMOVEs, and returns them oldest first.
// It stops at the first miss, so an empty queue costs one cheap call.
var moveScript = redis.NewScript(`
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out
`)

// moveBatch moves up to n messages from queue to processing without
// blocking.
func (p *Peer) moveBatch(ctx context.Context, queue, processing string, n int) ([]string, error) {
	out, err := moveScript.Run(ctx, p.rdb, []string{queue, processing}, n).StringSlice()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("move from %s: %w", queue, err)
	}
	return out, nil
}
