package redisapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrTimeout is returned by Call when not every destination answered in
// time. The responses that did arrive are returned with it.
var ErrTimeout = errors.New("redisapi: timed out waiting for responses")

// Client talks to a local rmb-peer through Redis. Safe for concurrent use.
type Client struct {
	rdb *redis.Client
}

// NewClient wraps a go-redis client.
func NewClient(rdb *redis.Client) *Client { return &Client{rdb: rdb} }

// CallOptions tune a call. nil means defaults.
type CallOptions struct {
	// TTL is the envelope's time to live; default 60s. The peer clamps it
	// to at most 30 minutes.
	TTL time.Duration
	// Schema of the payload; default "application/json".
	Schema string
	// Session is the destination session id; default none.
	Session string
	// Tags, e.g. "fail-fast".
	Tags string
}

// Call sends cmd with data to every twin in dst and waits for one response
// from each, or until the TTL (plus a little slack) or ctx runs out.
// Error answers come back as responses whose Error is set. A message on
// the reply queue whose ref is not this call's, or whose src is not a
// destination still waiting, is not a response and is skipped.
func (c *Client) Call(ctx context.Context, dst []uint32, cmd string, data []byte, opts *CallOptions) ([]IncomingResponse, error) {
	if len(dst) == 0 {
		return nil, errors.New("redisapi: call needs at least one destination")
	}
	var o CallOptions
	if opts != nil {
		o = *opts
	}
	if o.TTL <= 0 {
		o.TTL = 60 * time.Second
	}
	if o.Schema == "" {
		o.Schema = "application/json"
	}
	id := newID()
	req := OutgoingRequest{
		Version:      Version,
		Ref:          id,
		Command:      cmd,
		Expiration:   int64(o.TTL / time.Second),
		Data:         encode(data),
		Destinations: dst,
		ReplyTo:      "msgbus.reply." + id,
		Schema:       o.Schema,
		Now:          time.Now().Unix(),
	}
	if o.Session != "" {
		req.Session = &o.Session
	}
	if o.Tags != "" {
		req.Tags = &o.Tags
	}
	body := req.AppendJSON(nil)
	// Redis removes a list when its last entry is popped, so the reply
	// queue only needs deleting when answers may still arrive late.
	answered := false
	defer func() {
		if !answered {
			c.rdb.Del(context.WithoutCancel(ctx), req.ReplyTo)
		}
	}()

	deadline := time.Now().Add(o.TTL + 5*time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var out []IncomingResponse
	// The push and the first wait share a round trip.
	res, err := c.pushAndPop(ctx, QueueLocal, body, req.ReplyTo)
	switch {
	case errors.Is(err, errPush):
		return nil, fmt.Errorf("redisapi: push request: %w", err)
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("redisapi: wait for response: %w", err)
	}
	waiting := make(map[uint32]bool, len(dst))
	for _, d := range dst {
		waiting[d] = true
	}
	for {
		if res != nil {
			r, err := ParseIncomingResponseString(res[1])
			if err != nil {
				return out, fmt.Errorf("redisapi: peer sent a response that is not JSON: %w", err)
			}
			if accept(r, id, waiting) {
				out = append(out, *r)
			}
		}
		if len(waiting) == 0 || len(out) == len(dst) {
			break
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			if d, ok := ctx.Deadline(); ok && !d.After(deadline) {
				return out, context.DeadlineExceeded
			}
			return out, ErrTimeout
		}
		// BRPOP's own timeout (whole seconds, at least one) bounds each
		// wait: go-redis does not cut a blocking command short when ctx ends.
		res, err = c.rdb.BRPop(ctx, time.Second, req.ReplyTo).Result()
		if errors.Is(err, redis.Nil) {
			res = nil
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			return out, fmt.Errorf("redisapi: wait for response: %w", err)
		}
	}
	answered = true
	return out, nil
}

// accept reports whether r answers the request ref: its ref is ref and
// its src is a destination still waiting, which it then no longer is.
// An error from a relay that names no destination (src "0") counts for
// one of them. Anything else on the ret queue (a forgery, a duplicate)
// is skipped: only the peer should push there, but the queue is a plain
// Redis list.
func accept(r *IncomingResponse, ref string, waiting map[uint32]bool) bool {
	if r.Ref != ref {
		return false
	}
	twin, _, err := ParseAddress(r.Source)
	switch {
	case err == nil && waiting[twin]:
		delete(waiting, twin)
		return true
	case err == nil && twin == 0 && r.Error != nil && len(waiting) > 0:
		for d := range waiting {
			delete(waiting, d)
			break
		}
		return true
	}
	return false
}

// Handler serves one request. Returning an *Error sends that error code;
// any other error is sent as code 500.
type Handler func(ctx context.Context, req *IncomingRequest, payload []byte) ([]byte, error)

// Serve pops requests for cmd and answers them with h until ctx is done.
// Requests whose JSON does not parse are logged and skipped.
func (c *Client) Serve(ctx context.Context, cmd string, h Handler, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	queue := CommandQueue(cmd)
	var reply struct {
		queue string
		body  []byte
	}
	for {
		// The answer to the last request and the wait for the next one
		// share a round trip.
		var res []string
		var err error
		if reply.body != nil {
			res, err = c.pushAndPop(ctx, reply.queue, reply.body, queue)
			reply.body = nil
		} else {
			res, err = c.rdb.BRPop(ctx, time.Second, queue).Result()
			if errors.Is(err, redis.Nil) {
				res, err = nil, nil
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errPush) {
				return fmt.Errorf("redisapi: push response: %w", err)
			}
			return fmt.Errorf("redisapi: pop %s: %w", queue, err)
		}
		if res == nil {
			continue
		}
		req, err := ParseIncomingRequestString(res[1])
		if err != nil {
			logger.Warn("skipping a request that is not JSON", "queue", queue, "err", err)
			continue
		}
		resp := OutgoingResponse{
			Version:     Version,
			Ref:         req.Ref,
			Destination: req.Source,
			Schema:      req.Schema,
		}
		payload, err := req.Payload()
		var out []byte
		if err == nil {
			out, err = h(ctx, req, payload)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = &Error{Code: 500, Message: err.Error()}
			}
			resp.Error = e
		} else {
			resp.Data = encode(out)
		}
		resp.Now = time.Now().Unix()
		reply.body = resp.AppendJSON(nil)
		reply.queue = req.ReplyTo
		if reply.queue == "" {
			reply.queue = QueueReply
		}
		if ctx.Err() != nil {
			// Stopping: push the answer without waiting for more work.
			if err := c.rdb.LPush(context.WithoutCancel(ctx), reply.queue, reply.body).Err(); err != nil {
				return fmt.Errorf("redisapi: push response: %w", err)
			}
			return nil
		}
	}
}

// errPush marks a failed push of pushAndPop.
var errPush = errors.New("push failed")

// pushAndPop LPUSHes body onto push and then waits up to a second in BRPOP
// on pop, in one round trip. It returns the popped [key, value], nil when
// nothing came. An error of the push wraps errPush.
func (c *Client) pushAndPop(ctx context.Context, push string, body []byte, pop string) ([]string, error) {
	if t := c.rdb.Options().ReadTimeout; t > 0 && t < 2*time.Second {
		// A pipeline reads with the client's read timeout, which would
		// cut the blocking pop short: two round trips then.
		if err := c.rdb.LPush(ctx, push, body).Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", errPush, err)
		}
		res, err := c.rdb.BRPop(ctx, time.Second, pop).Result()
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return res, err
	}
	pipe := c.rdb.Pipeline()
	pushed := pipe.LPush(ctx, push, body)
	popped := pipe.BRPop(ctx, time.Second, pop)
	pipe.Exec(ctx)
	if err := pushed.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", errPush, err)
	}
	res, err := popped.Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return res, err
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Acknowledged delivery (at-least-once into services).
//
// A service that pops a request with BRPOP and dies before answering loses
// it. A consumer that takes requests instead keeps each one in a
// processing list of its own until its answer is pushed:
//
//  1. ZADD msgbus.system.leases <now_ms + visibility_ms> <consumer>
//  2. BLMOVE msgbus.<cmd> msgbus.system.taken.<consumer> RIGHT LEFT <wait>
//     (and ZADD the lease again once it got one)
//  3. MULTI; LPUSH msgbus.system.reply <response>;
//     LREM msgbus.system.taken.<consumer> 1 <request as taken>; EXEC
//
// Step 3 is the acknowledgement: the request is done exactly when its
// answer is queued. A consumer that gives up a request without answering
// removes it with the LREM alone (Ack). A consumer that works on a request
// for longer than its visibility timeout renews its lease (step 1) while
// it works. The peer sweeps the leases every second: the requests held by
// a consumer whose lease ran out go back to the serving end of their
// command lists (RPUSH, so they are taken next) for another consumer, and
// the lease is dropped. A consumer that answers after its requests were
// redelivered does no harm: the peer answers each request once and drops
// the second answer (rmb_peer_dropped_total{reason="duplicate_answer"}).

// Keys of acknowledged delivery.
const (
	// QueueTakenPrefix + consumer is the processing list of a consumer.
	QueueTakenPrefix = "msgbus.system.taken."
	// KeyLeases is the sorted set of consumers by lease expiry, unix
	// milliseconds.
	KeyLeases = "msgbus.system.leases"
	// MaxConsumerLen bounds a consumer name, in bytes.
	MaxConsumerLen = 64
	// DefaultVisibility is the visibility timeout Serve uses by default.
	DefaultVisibility = 30 * time.Second
	// MinVisibility is the shortest visibility timeout accepted.
	MinVisibility = 2 * time.Second
)

// ConsumerChars are the characters a consumer name may hold besides ASCII
// letters and digits.
const ConsumerChars = "._-:@+"

// CheckConsumer reports whether name may name a consumer: 1 to
// MaxConsumerLen bytes of letters, digits and ConsumerChars.
func CheckConsumer(name string) error {
	if name == "" || len(name) > MaxConsumerLen {
		return fmt.Errorf("redisapi: consumer name must be 1 to %d bytes, got %d", MaxConsumerLen, len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(ConsumerChars, c) >= 0) {
			return fmt.Errorf("redisapi: consumer name: byte 0x%02x at %d (allowed: letters, digits and %q)", c, i, ConsumerChars)
		}
	}
	return nil
}

// Taken is a request a consumer took (Take) and has not acknowledged yet.
type Taken struct {
	// Request is the parsed request; nil when Raw is not a request (it
	// should then be acknowledged, Ack, to drop it).
	Request *IncomingRequest
	// Raw is the request as taken: the value to remove on acknowledgement.
	Raw      string
	Consumer string
	// Err is why Raw did not parse.
	Err error
}

// Lease sets consumer's lease to expire visibility from now (step 1).
func (c *Client) Lease(ctx context.Context, consumer string, visibility time.Duration) error {
	if err := CheckConsumer(consumer); err != nil {
		return err
	}
	until := time.Now().Add(visibility).UnixMilli()
	return c.rdb.ZAdd(ctx, KeyLeases, redis.Z{Score: float64(until), Member: consumer}).Err()
}

// Take waits up to wait (whole seconds, at least one) for a request for
// cmd and moves it into consumer's processing list, under a lease of
// visibility. It returns nil, nil when none came.
func (c *Client) Take(ctx context.Context, cmd, consumer string, visibility, wait time.Duration) (*Taken, error) {
	if visibility < MinVisibility {
		return nil, fmt.Errorf("redisapi: visibility %v is under %v", visibility, MinVisibility)
	}
	if wait < time.Second {
		wait = time.Second
	}
	// The lease must outlive the wait: an entry moved at its end is
	// covered until the lease is renewed below.
	if wait > visibility/2 {
		wait = (visibility / 2).Truncate(time.Second)
	}
	if err := c.Lease(ctx, consumer, visibility); err != nil {
		return nil, err
	}
	raw, err := c.rdb.BLMove(ctx, CommandQueue(cmd), QueueTakenPrefix+consumer, "RIGHT", "LEFT", wait).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := c.Lease(ctx, consumer, visibility); err != nil {
		return nil, err
	}
	t := &Taken{Raw: raw, Consumer: consumer}
	t.Request, t.Err = ParseIncomingRequestString(raw)
	return t, nil
}

// Answer pushes the answer to a taken request and acknowledges it in one
// transaction (step 3).
func (c *Client) Answer(ctx context.Context, t *Taken, resp *OutgoingResponse) error {
	queue := QueueReply
	if t.Request != nil && t.Request.ReplyTo != "" {
		queue = t.Request.ReplyTo
	}
	_, err := c.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.LPush(ctx, queue, resp.AppendJSON(nil))
		pipe.LRem(ctx, QueueTakenPrefix+t.Consumer, 1, t.Raw)
		return nil
	})
	return err
}

// Ack removes a taken request without answering it: no other consumer
// will see it. Use it for a request that cannot be parsed.
func (c *Client) Ack(ctx context.Context, t *Taken) error {
	return c.rdb.LRem(ctx, QueueTakenPrefix+t.Consumer, 1, t.Raw).Err()
}

// ServeOptions tune ServeWith.
type ServeOptions struct {
	// Logger receives skipped requests. Default none.
	Logger *slog.Logger
	// Consumer, when set, makes delivery acknowledged: requests are taken
	// into msgbus.system.taken.<Consumer> and acknowledged with their
	// answers, and the requests of a consumer that dies are delivered
	// again to another. Each consumer process needs a name of its own
	// (CheckConsumer), kept across restarts if it can be (a restarted
	// consumer's old requests are then redelivered once its old lease
	// runs out). Empty: plain BRPOP, as Serve.
	Consumer string
	// Visibility is how long a taken request stays with this consumer
	// without an answer before it is delivered again; the lease is renewed
	// while the handler runs. Default DefaultVisibility.
	Visibility time.Duration
}

// ServeWith is Serve with options: with a Consumer, delivery is
// acknowledged (at-least-once): a request is lost neither when the
// process dies while handling it nor when its answer cannot be pushed.
func (c *Client) ServeWith(ctx context.Context, cmd string, h Handler, o *ServeOptions) error {
	var opts ServeOptions
	if o != nil {
		opts = *o
	}
	if opts.Consumer == "" {
		return c.Serve(ctx, cmd, h, opts.Logger)
	}
	if err := CheckConsumer(opts.Consumer); err != nil {
		return err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	vis := opts.Visibility
	if vis <= 0 {
		vis = DefaultVisibility
	}
	if vis < MinVisibility {
		return fmt.Errorf("redisapi: visibility %v is under %v", vis, MinVisibility)
	}
	for ctx.Err() == nil {
		t, err := c.Take(ctx, cmd, opts.Consumer, vis, time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("redisapi: take from %s: %w", CommandQueue(cmd), err)
		}
		if t == nil {
			continue
		}
		if t.Err != nil {
			logger.Warn("dropping a request that is not JSON", "queue", CommandQueue(cmd), "err", t.Err)
			if err := c.Ack(context.WithoutCancel(ctx), t); err != nil {
				return fmt.Errorf("redisapi: ack: %w", err)
			}
			continue
		}
		resp := c.handleTaken(ctx, t, h, vis)
		// The answer goes out even when ctx ended meanwhile: the handler
		// did the work.
		if err := c.Answer(context.WithoutCancel(ctx), t, resp); err != nil {
			// Not acknowledged: the request is delivered again once the
			// lease runs out.
			return fmt.Errorf("redisapi: push response: %w", err)
		}
	}
	return nil
}

// handleTaken runs h on t, renewing the lease while it runs.
func (c *Client) handleTaken(ctx context.Context, t *Taken, h Handler, vis time.Duration) *OutgoingResponse {
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		tick := time.NewTicker(vis / 3)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				c.Lease(context.WithoutCancel(ctx), t.Consumer, vis)
			}
		}
	}()
	defer func() { close(stop); <-renewed }()
	req := t.Request
	resp := &OutgoingResponse{Version: Version, Ref: req.Ref, Destination: req.Source, Schema: req.Schema}
	payload, err := req.Payload()
	var out []byte
	if err == nil {
		out, err = h(ctx, req, payload)
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Code: 500, Message: err.Error()}
		}
		resp.Error = e
	} else {
		resp.Data = encode(out)
	}
	resp.Now = time.Now().Unix()
	return resp
}
