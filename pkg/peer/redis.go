package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Redis lists of the local API (docs/protocol.md §9, package redisapi) and of
// this peer's bookkeeping.
const (
	// LocalQueue receives outgoing requests from clients.
	LocalQueue = redisapi.QueueLocal
	// ReplyQueue receives outgoing responses from services.
	ReplyQueue = redisapi.QueueReply
	// LocalProcessing and ReplyProcessing hold the messages the peer has
	// popped but not yet handed to a relay; they are handled again after a
	// restart, or when no worker holds them (popLoop).
	LocalProcessing = LocalQueue + ".processing"
	ReplyProcessing = ReplyQueue + ".processing"
	// DeadLetterQueue receives what could not be handled, as DeadLetter
	// JSON.
	DeadLetterQueue = redisapi.QueueDeadLetter
)

// CommandQueue is the list a service for cmd pops requests from.
func CommandQueue(cmd string) string { return redisapi.CommandQueue(cmd) }

// DeadLetter is an entry of DeadLetterQueue.
type DeadLetter = redisapi.DeadLetter

var errQueueFull = errors.New("queue is full")

// pushBounded pushes b onto queue, refusing (errQueueFull) when the queue
// is at its bound, and retrying Redis failures until deadline. Concurrent
// pushes share round trips (batch.go).
func (p *Peer) pushBounded(ctx context.Context, queue string, b []byte, deadline time.Time) error {
	delay := 50 * time.Millisecond
	for {
		n, err := p.push(ctx, queue, b)
		if err == nil {
			if n < 0 {
				return fmt.Errorf("%s: %w (%d entries)", queue, errQueueFull, p.opts.QueueLimit)
			}
			return nil
		}
		if ctx.Err() != nil || !time.Now().Add(delay).Before(deadline) {
			return fmt.Errorf("push to %s: %w", queue, err)
		}
		p.log.Warn("redis push failed; retrying", "queue", queue, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// deadLetter pushes d onto the dead-letter list. When that list is full
// the message is logged and counted instead.
func (p *Peer) deadLetter(ctx context.Context, d *DeadLetter) {
	d.Time = time.Now().UTC()
	b, _ := json.Marshal(d)
	p.metrics.deadLettered.WithLabelValues(d.Queue).Inc()
	p.log.Warn("message dead-lettered", "queue", d.Queue, "reason", d.Reason, "dst", d.Dst)
	if err := p.pushBounded(ctx, DeadLetterQueue, b, time.Now().Add(10*time.Second)); err != nil {
		p.metrics.dropped.WithLabelValues(dropDeadLetter).Inc()
		p.log.Error("dead-letter list unavailable; message lost", "err", err, "message", string(b))
	}
}

// deliverToQueue returns a deliver function that pushes answers onto a
// client's ret queue as IncomingResponse JSON, without waiting for the
// push (pushAsync). An answer that cannot be pushed is dead-lettered.
func (p *Peer) deliverToQueue(ret, ref string, deadline time.Time) func(context.Context, *Response, *writeOp) {
	return func(ctx context.Context, r *Response, after *writeOp) {
		msg := IncomingResponse{
			Version: 1,
			Ref:     ref,
			Data:    redisapi.EncodeData(r.Data),
			Source:  address{twin: r.Source, sid: r.Session}.String(),
			Schema:  r.Schema,
			Now:     r.Timestamp.Unix(),
		}
		if r.Err != nil {
			msg.Error = &JSONError{Code: r.Err.Code, Message: r.Err.Message}
		}
		b := msg.AppendJSON(nil)
		// A client may still be waiting a little after the deadline.
		until := deadline
		if now := time.Now(); until.Before(now) {
			until = now
		}
		// The answer cannot be had again: a peer that is stopping still
		// pushes it, for a little while (retries included).
		p.pushAsync(p.graceCtx, ret, b, until.Add(30*time.Second), after, func(err error) {
			p.deadLetter(context.Background(), &DeadLetter{Queue: ret, Message: string(b),
				Reason: "cannot push response to ret queue: " + err.Error(), Ref: ref, Ret: ret})
		})
	}
}

// stopGrace is how long answers are still pushed to Redis after the peer
// was asked to stop.
const stopGrace = 2 * time.Second

// detach returns a context that ends grace after ctx ends, not with it.
func detach(ctx context.Context, grace time.Duration) (context.Context, context.CancelFunc) {
	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(grace, cancel) })
	return dctx, func() { stop(); cancel() }
}

// popLoop moves messages from queue to its processing list and hands each
// to handle on a bounded set of goroutines. Messages left in the
// processing list by an earlier run are handled first, and entries no
// worker holds are found and handled while it runs (processing.go).
// handle removes the message from the processing list when done with it
// (finish) and returns whether it did; one it did not finish stays in the
// list.
//
// While messages keep coming, each round trip moves a batch of them
// (moveScript); once a batch comes back short, popLoop blocks in BLMOVE,
// hands the message it gets to a worker at once and then looks for more,
// less often while it finds none (probe).
func (p *Peer) popLoop(ctx context.Context, queue, processing string, handle func(context.Context, string) bool) {
	held := p.held[processing]
	// Long-lived workers: a goroutine per message would grow a new stack
	// for the crypto every time.
	work := make(chan string)
	var wg sync.WaitGroup
	for range p.opts.Workers {
		wg.Go(func() {
			for raw := range work {
				if !handle(ctx, raw) {
					held.release(raw)
				}
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	// run hands held messages to the workers. A message not handed to a
	// worker when the peer stops stays in the processing list for the
	// next run.
	run := func(msgs []string) {
		for i, raw := range msgs {
			if ctx.Err() == nil {
				select {
				case work <- raw:
					continue
				case <-ctx.Done():
				}
			}
			for _, raw := range msgs[i:] {
				held.release(raw)
			}
			return
		}
	}
	sc := &scanner{processing: processing, held: held, first: true}
	delay := 100 * time.Millisecond
	fail := func(what string, err error) {
		p.log.Warn("redis unavailable", "op", what, "queue", queue, "err", err, "retry_in", delay)
		// The reply of a move may have been lost with the connection.
		sc.soon()
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	batch := min(p.opts.Workers, popBatch)
	more := false // whether the queue may hold more than one message
	// After a BLMOVE, a batch looks for messages behind the one it got
	// (probe). At low load it finds none: two commands and a round trip
	// per message for nothing. So while probes come back empty, the next
	// ones are skipped, more of them each time (skip, up to maxSkip); one
	// that finds messages, or a BLMOVE that came back at once (fastPop),
	// ends that.
	probe := false
	skip, skipped := 0, 0
	// BLMOVE blocks on a connection of its own.
	conn := &ownConn{rdb: p.rdb}
	defer conn.close()
	for ctx.Err() == nil {
		if sc.due(time.Now()) {
			first := sc.first
			left, err := p.scan(ctx, sc)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				fail("scan", err)
				continue
			}
			delay = 100 * time.Millisecond
			if len(left) > 0 {
				if first {
					p.log.Info("handling messages left from an earlier run", "queue", processing, "count", len(left))
				} else {
					p.log.Warn("handling messages no worker held (a lost Redis reply)", "queue", processing, "count", len(left))
				}
				p.metrics.recovered.WithLabelValues(processing).Add(float64(len(left)))
			}
			run(left)
		}
		var msgs []string
		var err error
		if more {
			msgs, err = p.moveBatch(ctx, queue, processing, batch)
			// A short batch emptied the queue: block next time.
			more = len(msgs) == batch
			if probe && err == nil {
				if len(msgs) == 0 {
					skip = min(2*skip+1, maxSkip)
				} else {
					skip = 0
				}
			}
			probe = false
		} else {
			var raw string
			t := time.Now()
			raw, err = conn.get().BLMove(ctx, queue, processing, "RIGHT", "LEFT", time.Second).Result()
			conn.check(err)
			if errors.Is(err, redis.Nil) {
				continue
			}
			// Others may have come with it: probe, unless probes found
			// nothing lately and this BLMOVE waited.
			if err == nil {
				if time.Since(t) < fastPop {
					skip = 0
				}
				if skipped >= skip {
					more, probe, skipped = true, true, 0
				} else {
					skipped++
				}
			}
			msgs = []string{raw}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			more = false
			fail("pop", err)
			continue
		}
		delay = 100 * time.Millisecond
		held.add(msgs...)
		run(msgs)
	}
}

// fastPop is how soon a BLMOVE must come back for popLoop to take it
// that the queue was not empty (a round trip to Redis, not a wait), and
// maxSkip how many BLMOVEs in a row may go without a batch behind them
// while those batches find nothing. Guessing wrong costs a few moves of
// single messages, or a batch that finds the queue empty.
const (
	fastPop = 200 * time.Microsecond
	maxSkip = 15
)

func (p *Peer) localLoop(ctx context.Context) {
	p.popLoop(ctx, LocalQueue, LocalProcessing, p.handleLocal)
	// No handler runs any more: write what waits for an answer
	// (finishLater) while redisLoop still runs.
	p.flushLater(true)
}

func (p *Peer) replyLoop(ctx context.Context) {
	p.popLoop(ctx, ReplyQueue, ReplyProcessing, p.handleReply)
}

// handleLocal sends one outgoing request from a client. It returns
// whether it finished the message (removed it from the processing list).
func (p *Peer) handleLocal(ctx context.Context, raw string) bool {
	req, err := redisapi.DecodeOutgoingRequestString(raw)
	if err != nil {
		d := &DeadLetter{Queue: LocalQueue, Message: raw, Reason: err.Error(), Code: envelope.CodeMalformed}
		if req != nil {
			d.Ref, d.Ret, d.Code = req.Ref, req.ReplyTo, envelope.CodeBadPayload
		}
		p.deadLetter(ctx, d)
		if req != nil {
			deliver := p.deliverToQueue(req.ReplyTo, req.Ref, time.Now())
			for _, dst := range answerable(req.Destinations) {
				p.metrics.errorCode(d.Code)
				deliver(ctx, &Response{Source: dst, Timestamp: time.Now(), Err: &Error{Code: d.Code, Message: err.Error()}}, nil)
			}
		}
		p.finish(LocalProcessing, raw, "")
		return true
	}
	payload, _ := req.Payload() // decoded by DecodeOutgoingRequest
	now := time.Now()
	start := now
	// A client's now anchors the deadline, so a request that waited in the
	// queue (peer down) keeps its TTL; a future or absurd now is ignored.
	if req.Now > 0 && req.Now <= now.Unix() {
		start = time.Unix(req.Now, 0)
	}
	spec := &requestSpec{
		uid:     newUID(),
		cmd:     req.Command,
		payload: payload,
		ttl:     envelope.ClampTTL(uint64(req.Expiration)),
		start:   start,
		tags:    req.Tags,
		schema:  req.Schema,
	}
	if req.Session != nil {
		spec.session = *req.Session
	}
	deadline := spec.deadline()
	deliver := p.deliverToQueue(req.ReplyTo, req.Ref, deadline)
	p.guardRet(req.ReplyTo, deadline)
	if !now.Before(deadline) {
		// It expired while queued (the peer was down or overloaded).
		for _, dst := range answerable(req.Destinations) {
			e := &Error{Code: envelope.CodeExpired, Message: "request expired in " + LocalQueue + " before it was sent"}
			p.deadLetter(ctx, &DeadLetter{Queue: LocalQueue, Message: raw, Reason: e.Message,
				Dst: dst, Code: e.Code, Ref: req.Ref, Ret: req.ReplyTo})
			p.metrics.errorCode(e.Code)
			deliver(ctx, &Response{Source: dst, Timestamp: now, Err: e}, nil)
		}
		p.finish(LocalProcessing, raw, "")
		return true
	}
	spec.ret, spec.ref = req.ReplyTo, req.Ref
	// A destination listed twice is sent and answered twice (startCopies).
	uids, sent := p.startCopies(ctx, spec, req.Destinations, deliver, func(uid string, dst uint32, e *Error) {
		p.deadLetter(ctx, &DeadLetter{Queue: LocalQueue, Message: raw, Reason: e.Message,
			Dst: dst, Code: e.Code, Ref: req.Ref, Ret: req.ReplyTo, UID: uid})
	})
	if !sent {
		return false // stopping: keep it in the processing list for the next run
	}
	// Remove it from the processing list and persist the request in one
	// transaction, or with the push of its answer if that comes soon.
	p.finishLater(raw, uids)
	return true
}

// handleReply sends one service response. It returns whether it finished
// the message (removed it from the processing list).
func (p *Peer) handleReply(ctx context.Context, raw string) bool {
	rep, err := redisapi.DecodeOutgoingResponseString(raw)
	if err != nil {
		p.deadLetter(ctx, &DeadLetter{Queue: ReplyQueue, Message: raw, Reason: err.Error(), Code: envelope.CodeMalformed})
		p.finish(ReplyProcessing, raw, "")
		return true
	}
	dst, _ := parseAddress(rep.Destination)
	if p.answeredAlready(rep.Ref, dst) {
		// A request delivered again (ack.go) was answered twice.
		p.metrics.dropped.WithLabelValues(dropDuplicateAnswer).Inc()
		p.finish(ReplyProcessing, raw, "")
		return true
	}
	deadline, ok := p.requestDeadline(rep.Ref, dst)
	if !ok {
		// Not seen by this run (restart, or a made-up ref): answer
		// anyway with the default lifetime.
		deadline = time.Now().Add(envelope.DefaultTTL * time.Second)
	}
	var e *Error
	if rep.Error != nil {
		e = &Error{Code: rep.Error.Code, Message: rep.Error.Message}
	}
	payload, _ := rep.Payload() // decoded by DecodeOutgoingResponse
	err = p.sendAnswer(ctx, rep.Ref, dst, payload, rep.Schema, e, deadline)
	if err != nil && ctx.Err() != nil {
		return false // stopping: keep it for the next run
	}
	if err != nil {
		p.deadLetter(ctx, &DeadLetter{Queue: ReplyQueue, Message: raw, Reason: "response not delivered: " + err.Error(),
			Dst: dst.twin, UID: rep.Ref})
	}
	p.finish(ReplyProcessing, raw, "")
	return true
}
