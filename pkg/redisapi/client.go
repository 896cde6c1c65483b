package redisapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
// Error answers come back as responses whose Error is set.
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
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if err := c.rdb.LPush(ctx, QueueLocal, body).Err(); err != nil {
		return nil, fmt.Errorf("redisapi: push request: %w", err)
	}
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
	for len(out) < len(dst) {
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
		res, err := c.rdb.BRPop(ctx, time.Second, req.ReplyTo).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			return out, fmt.Errorf("redisapi: wait for response: %w", err)
		}
		var r IncomingResponse
		if err := json.Unmarshal([]byte(res[1]), &r); err != nil {
			return out, fmt.Errorf("redisapi: peer sent a response that is not JSON: %w", err)
		}
		out = append(out, r)
	}
	answered = true
	return out, nil
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
	for {
		res, err := c.rdb.BRPop(ctx, time.Second, queue).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("redisapi: pop %s: %w", queue, err)
		}
		var req IncomingRequest
		if err := json.Unmarshal([]byte(res[1]), &req); err != nil {
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
			out, err = h(ctx, &req, payload)
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
		body, _ := json.Marshal(resp)
		replyTo := req.ReplyTo
		if replyTo == "" {
			replyTo = QueueReply
		}
		if err := c.rdb.LPush(ctx, replyTo, body).Err(); err != nil {
			return fmt.Errorf("redisapi: push response: %w", err)
		}
	}
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
