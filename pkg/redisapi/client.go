package redisapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
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
