package peer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// Redis lists of the local API (PROTOCOL.md §6) and of this peer's
// bookkeeping.
const (
	// LocalQueue receives outgoing requests from clients.
	LocalQueue = "msgbus.system.local"
	// ReplyQueue receives outgoing responses from services.
	ReplyQueue = "msgbus.system.reply"
	// LocalProcessing and ReplyProcessing hold the messages the peer has
	// popped but not yet handed to a relay; they are handled again after a
	// restart.
	LocalProcessing = "msgbus.system.local.processing"
	ReplyProcessing = "msgbus.system.reply.processing"
	// DeadLetterQueue receives what could not be handled, as DeadLetter
	// JSON.
	DeadLetterQueue = "msgbus.system.deadletter"
)

// CommandQueue is the list a service for cmd pops requests from.
func CommandQueue(cmd string) string { return "msgbus." + cmd }

// DeadLetter is an entry of DeadLetterQueue.
type DeadLetter struct {
	Queue   string    `json:"queue"`             // where the message came from
	Message string    `json:"message"`           // the original message, verbatim
	Reason  string    `json:"reason"`            // why it was not handled
	Dst     uint32    `json:"dst,omitempty"`     // the destination that failed, if one
	Time    time.Time `json:"time"`              // when it was dead-lettered
	Code    uint32    `json:"code,omitempty"`    // RMB error code, if one
	Ref     string    `json:"ref,omitempty"`     // the client's ref, if known
	Ret     string    `json:"ret,omitempty"`     // the client's ret queue, if known
	UID     string    `json:"uid,omitempty"`     // envelope uid, if one was made
	Extra   string    `json:"details,omitempty"` // anything else
}

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
// client's ret queue as IncomingResponse JSON. An answer that does not fit
// is dead-lettered.
func (p *Peer) deliverToQueue(ret, ref string, deadline time.Time) func(context.Context, *Response) {
	return func(ctx context.Context, r *Response) {
		msg := IncomingResponse{
			Version: 1,
			Ref:     ref,
			Data:    base64.StdEncoding.EncodeToString(r.Data),
			Source:  address{twin: r.Source, sid: r.Session}.String(),
			Schema:  r.Schema,
			Now:     r.Timestamp.Unix(),
		}
		if r.Err != nil {
			msg.Error = &JSONError{Code: r.Err.Code, Message: r.Err.Message}
		}
		b, _ := json.Marshal(&msg)
		// A client may still be waiting a little after the deadline.
		until := deadline
		if now := time.Now(); until.Before(now) {
			until = now
		}
		// The answer cannot be had again: a peer that is stopping still
		// pushes it, for a little while.
		ctx, cancel := detach(ctx, stopGrace)
		defer cancel()
		if err := p.pushBounded(ctx, ret, b, until.Add(30*time.Second)); err != nil {
			p.deadLetter(context.WithoutCancel(ctx), &DeadLetter{Queue: ret, Message: string(b),
				Reason: "cannot push response to ret queue: " + err.Error(), Ref: ref, Ret: ret})
		}
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
// processing list by an earlier run are handled first. handle removes the
// message from the processing list when done with it (finish).
//
// While messages keep coming, each round trip moves a batch of them
// (moveScript); once a batch comes back short, popLoop blocks in BLMOVE,
// hands the message it gets to a worker at once and then looks for more.
func (p *Peer) popLoop(ctx context.Context, queue, processing string, handle func(context.Context, string)) {
	// Long-lived workers: a goroutine per message would grow a new stack
	// for the crypto every time.
	work := make(chan string)
	var wg sync.WaitGroup
	for range p.opts.Workers {
		wg.Go(func() {
			for raw := range work {
				handle(ctx, raw)
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	run := func(raw string) {
		select {
		case work <- raw:
		case <-ctx.Done(): // stays in the processing list
		}
	}
	recovered := false
	delay := 100 * time.Millisecond
	fail := func(what string, err error) {
		p.log.Warn("redis unavailable", "op", what, "queue", queue, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	batch := min(p.opts.Workers, popBatch)
	more := false // whether the queue may hold more than one message
	for ctx.Err() == nil {
		if !recovered {
			left, err := p.rdb.LRange(ctx, processing, 0, -1).Result()
			if err != nil {
				fail("recover", err)
				continue
			}
			if len(left) > 0 {
				p.log.Info("handling messages left from an earlier run", "queue", processing, "count", len(left))
			}
			// Oldest first: the processing list is pushed on the left.
			for i := len(left) - 1; i >= 0 && ctx.Err() == nil; i-- {
				run(left[i])
			}
			recovered = true
		}
		var msgs []string
		var err error
		if more {
			msgs, err = p.moveBatch(ctx, queue, processing, batch)
			// A short batch emptied the queue: block next time.
			more = len(msgs) == batch
		} else {
			var raw string
			raw, err = p.rdb.BLMove(ctx, queue, processing, "RIGHT", "LEFT", time.Second).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			// Others may have come with it.
			more = err == nil
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
		// A message not handed to a worker when the peer stops stays in
		// the processing list for the next run.
		for _, raw := range msgs {
			if ctx.Err() != nil {
				return
			}
			run(raw)
		}
	}
}

func (p *Peer) localLoop(ctx context.Context) {
	p.popLoop(ctx, LocalQueue, LocalProcessing, p.handleLocal)
}

func (p *Peer) replyLoop(ctx context.Context) {
	p.popLoop(ctx, ReplyQueue, ReplyProcessing, p.handleReply)
}

// handleLocal sends one outgoing request from a client.
func (p *Peer) handleLocal(ctx context.Context, raw string) {
	req, err := DecodeOutgoingRequest([]byte(raw))
	if err != nil {
		d := &DeadLetter{Queue: LocalQueue, Message: raw, Reason: err.Error(), Code: envelope.CodeMalformed}
		if req != nil {
			d.Ref, d.Ret, d.Code = req.Ref, req.Ret, envelope.CodeBadPayload
		}
		p.deadLetter(ctx, d)
		if req != nil {
			dsts := uniqueTwins(req.Dst)
			if len(dsts) == 0 {
				dsts = []uint32{0}
			}
			deliver := p.deliverToQueue(req.Ret, req.Ref, time.Now())
			for _, dst := range dsts {
				p.metrics.errorCode(d.Code)
				deliver(ctx, &Response{Source: dst, Timestamp: time.Now(), Err: &Error{Code: d.Code, Message: err.Error()}})
			}
		}
		p.finish(LocalProcessing, raw, "")
		return
	}
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
		payload: req.payload,
		ttl:     envelope.ClampTTL(req.Expiration),
		start:   start,
		tags:    req.Tags,
		schema:  req.Schema,
	}
	if req.Session != nil {
		spec.session = *req.Session
	}
	deadline := spec.deadline()
	deliver := p.deliverToQueue(req.Ret, req.Ref, deadline)
	if !now.Before(deadline) {
		// It expired while queued (the peer was down or overloaded).
		for _, dst := range uniqueTwins(req.Dst) {
			e := &Error{Code: envelope.CodeExpired, Message: "request expired in " + LocalQueue + " before it was sent"}
			p.deadLetter(ctx, &DeadLetter{Queue: LocalQueue, Message: raw, Reason: e.Message,
				Dst: dst, Code: e.Code, Ref: req.Ref, Ret: req.Ret})
			p.metrics.errorCode(e.Code)
			deliver(ctx, &Response{Source: dst, Timestamp: now, Err: e})
		}
		p.finish(LocalProcessing, raw, "")
		return
	}
	spec.ret, spec.ref = req.Ret, req.Ref
	sent := p.startRequest(ctx, spec, uniqueTwins(req.Dst), deliver, func(dst uint32, e *Error) {
		p.deadLetter(ctx, &DeadLetter{Queue: LocalQueue, Message: raw, Reason: e.Message,
			Dst: dst, Code: e.Code, Ref: req.Ref, Ret: req.Ret, UID: spec.uid})
	})
	if !sent {
		return // stopping: keep it in the processing list for the next run
	}
	// Remove it from the processing list and persist the request in one
	// transaction.
	p.finish(LocalProcessing, raw, spec.uid)
}

// handleReply sends one service response.
func (p *Peer) handleReply(ctx context.Context, raw string) {
	rep, err := DecodeOutgoingResponse([]byte(raw))
	if err != nil {
		p.deadLetter(ctx, &DeadLetter{Queue: ReplyQueue, Message: raw, Reason: err.Error(), Code: envelope.CodeMalformed})
		p.finish(ReplyProcessing, raw, "")
		return
	}
	dst, _ := parseAddress(rep.Dst)
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
	err = p.sendAnswer(ctx, rep.Ref, dst, rep.payload, rep.Schema, e, deadline)
	if err != nil && ctx.Err() != nil {
		return // stopping: keep it for the next run
	}
	if err != nil {
		p.deadLetter(ctx, &DeadLetter{Queue: ReplyQueue, Message: raw, Reason: "response not delivered: " + err.Error(),
			Dst: dst.twin, UID: rep.Ref})
	}
	p.finish(ReplyProcessing, raw, "")
}
