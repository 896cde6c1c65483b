package peer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-message Redis work is coalesced: handlers hand their commands to one
// of two loops, and each loop sends everything queued in one pipeline as
// soon as the previous pipeline returned. An idle peer sends each command
// at once, so coalescing adds no latency; a busy one sends many commands
// per round trip. (This is the write coalescing of a send loop that
// flushes when its queue runs dry.)
//
//   - pushLoop runs the bounded pushes (pushScript) and hands each caller
//     its own result, so the bound holds exactly: Redis runs the scripts
//     one after the other.
//   - writeLoop runs the bookkeeping nobody waits for: LREM of handled
//     messages from a processing list, and HSET/HDEL of the persisted
//     pending requests (pending.go), in one MULTI/EXEC per batch. It runs
//     them in the order they were queued, which pending.go relies on.

const (
	// maxBatch bounds the commands of one pipeline.
	maxBatch = 256
	// popBatch bounds how many messages popLoop moves to a processing
	// list in one round trip.
	popBatch = 64
)

// errStopped means the peer stopped before a Redis command was sent.
var errStopped = errors.New("peer: stopped")

// pushOp is one bounded push waiting for pushLoop.
type pushOp struct {
	ctx   context.Context
	queue string
	b     []byte
	res   chan pushResult // buffered 1; pushLoop sends exactly one result
}

type pushResult struct {
	n   int64 // new length of the list, -1 when it was full
	err error
}

// writeOp is bookkeeping for writeLoop. Each set field adds a command.
type writeOp struct {
	processing string   // LREM raw from this processing list
	raw        string   //
	persist    string   // HSET the pending request with this uid (pending.go)
	forget     []string // HDEL these fields of PendingHash
}

// batchers are the two loops. Run starts them before the loops that use
// them and stops them after those returned.
type batchers struct {
	pushes  chan *pushOp
	writes  chan writeOp
	stop    chan struct{} // closed to stop the loops
	stopped chan struct{} // closed once both loops returned
}

// startBatchers starts pushLoop and writeLoop. The returned function stops
// them, after they have sent what is queued, and waits for them.
func (p *Peer) startBatchers() (stop func()) {
	b := &batchers{
		pushes:  make(chan *pushOp, 4*maxBatch),
		writes:  make(chan writeOp, 16*maxBatch),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	p.batch = b
	done := make(chan struct{}, 2)
	go func() { p.pushLoop(b); done <- struct{}{} }()
	go func() { p.writeLoop(b); done <- struct{}{} }()
	go func() { <-done; <-done; close(b.stopped) }()
	return func() {
		close(b.stop)
		<-b.stopped
	}
}

// collect returns first followed by whatever else is queued on ch, up to
// maxBatch items, without waiting.
func collect[T any](ch <-chan T, first T) []T {
	batch := []T{first}
	for len(batch) < maxBatch {
		select {
		case op := <-ch:
			batch = append(batch, op)
		default:
			return batch
		}
	}
	return batch
}

// next waits for the first queued item. After stop it returns what is
// still queued and then ok == false.
func next[T any](ch <-chan T, stop <-chan struct{}) (op T, ok bool) {
	select {
	case op = <-ch:
		return op, true
	case <-stop:
	}
	select {
	case op = <-ch:
		return op, true
	default:
		return op, false
	}
}

// push runs pushScript for queue through pushLoop: the new list length, or
// -1 when the list is at QueueLimit.
func (p *Peer) push(ctx context.Context, queue string, b []byte) (int64, error) {
	op := &pushOp{ctx: ctx, queue: queue, b: b, res: make(chan pushResult, 1)}
	select {
	case p.batch.pushes <- op:
	case <-p.batch.stopped:
		return 0, errStopped
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	// pushLoop answers every op it took, quickly (one round trip); wait
	// for it even when ctx ends so the answer tells what Redis did.
	select {
	case r := <-op.res:
		return r.n, r.err
	case <-p.batch.stopped:
		select {
		case r := <-op.res:
			return r.n, r.err
		default:
			return 0, errStopped
		}
	}
}

func (p *Peer) pushLoop(b *batchers) {
	for {
		first, ok := next(b.pushes, b.stop)
		if !ok {
			return
		}
		p.runPushes(collect(b.pushes, first))
	}
}

// runPushes sends ops in one pipeline and answers each. An op whose
// context ended is answered without being sent.
func (p *Peer) runPushes(ops []*pushOp) {
	live := ops[:0:0]
	for _, op := range ops {
		if err := op.ctx.Err(); err != nil {
			op.res <- pushResult{err: err}
			continue
		}
		live = append(live, op)
	}
	if len(live) == 0 {
		return
	}
	// The pipeline is not cancelled with any one caller: go-redis bounds
	// it with its read and write timeouts.
	ctx := context.Background()
	cmds := p.pushPipeline(ctx, live)
	var again []int
	for i, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		// The script cache was flushed (or Redis restarted): load it once
		// and send those again.
		if err := pushScript.Load(ctx, p.rdb).Err(); err == nil {
			retry := make([]*pushOp, len(again))
			for j, i := range again {
				retry[j] = live[i]
			}
			for j, c := range p.pushPipeline(ctx, retry) {
				cmds[again[j]] = c
			}
		}
	}
	for i, c := range cmds {
		n, err := c.Int64()
		live[i].res <- pushResult{n: n, err: err}
	}
}

func (p *Peer) pushPipeline(ctx context.Context, ops []*pushOp) []*redis.Cmd {
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ops))
	for i, op := range ops {
		cmds[i] = pushScript.EvalSha(ctx, pipe, []string{op.queue}, p.opts.QueueLimit, op.b)
	}
	pipe.Exec(ctx) // errors are on each command
	return cmds
}

// write queues bookkeeping for writeLoop. It blocks while the queue is
// full (Redis is slow or down); after the peer stopped the op is lost,
// which only means a handled message is handled again on the next start.
func (p *Peer) write(op writeOp) {
	select {
	case p.batch.writes <- op:
	case <-p.batch.stopped:
		p.log.Warn("bookkeeping after stop not written", "processing", op.processing, "persist", op.persist, "forget", op.forget)
	}
}

func (p *Peer) writeLoop(b *batchers) {
	for {
		first, ok := next(b.writes, b.stop)
		if !ok {
			return
		}
		p.runWrites(collect(b.writes, first))
	}
}

// runWrites sends ops in one MULTI/EXEC, so the HSET of a request and the
// LREM of the message it came from happen together or not at all. A
// failed round trip is retried a few times; after that the messages stay
// in their processing list and are handled again on the next start.
func (p *Peer) runWrites(ops []writeOp) {
	ctx := context.Background()
	for i := 0; ; i++ {
		pipe := p.rdb.TxPipeline()
		for _, op := range ops {
			if op.persist != "" {
				if fields := p.pendingFields(op.persist); len(fields) > 0 {
					pipe.HSet(ctx, PendingHash, fields...)
				}
			}
			if op.processing != "" {
				pipe.LRem(ctx, op.processing, 1, op.raw)
			}
			if len(op.forget) > 0 {
				pipe.HDel(ctx, PendingHash, op.forget...)
			}
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

// finish removes raw from a processing list (through writeLoop). When
// persist is a uid, the pending request is persisted in the same
// transaction.
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
