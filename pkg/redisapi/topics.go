package redisapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Topics (docs/protocol.md, "Topics").
//
// A client asks its peer to publish, subscribe or unsubscribe by pushing a
// TopicRequest on QueueTopics; the peer answers on the request's ret queue
// with an IncomingResponse whose dat is the base64 of a JSON result
// (PublishResult, SubscribeResult or UnsubscribeResult) or whose err is
// set. Events of a subscription are pushed, as TopicEvent JSON, on the
// queue the subscription names.

// QueueTopics receives TopicRequests, client -> peer.
const QueueTopics = "msgbus.system.topics"

// Topic operations (TopicRequest.Op).
const (
	OpPublish     = "publish"
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
)

// Delivery levels.
const (
	LevelAtMostOnce = "at-most-once"
	LevelConfirmed  = "confirmed"
)

// TopicRequest is pushed by a client to QueueTopics.
type TopicRequest struct {
	Version int    `json:"ver"`
	Op      string `json:"op"`  // publish, subscribe or unsubscribe
	Ref     string `json:"ref"` // echoed in the answer
	ReplyTo string `json:"ret"` // where the answer goes; "" for none
	// Topic is a topic name (publish) or pattern with + and # (subscribe,
	// unsubscribe).
	Topic string `json:"topic"`

	// publish
	Data       string `json:"dat,omitempty"`     // base64 payload
	Schema     string `json:"shm,omitempty"`     // the payload's schema
	Public     bool   `json:"public,omitempty"`  // send in plain text
	Confirm    bool   `json:"confirm,omitempty"` // each subscriber's peer acknowledges
	Expiration int64  `json:"exp,omitempty"`     // seconds; default 60

	// subscribe, unsubscribe
	Twin  uint32 `json:"twin,omitempty"`  // the topic's owner
	Queue string `json:"queue,omitempty"` // where events go
	Level string `json:"level,omitempty"` // at-most-once (default) or confirmed
	Lease int64  `json:"lease,omitempty"` // seconds asked of the owner; default 300
}

// PublishResult is the answer to a publish.
type PublishResult struct {
	UID         string `json:"uid"`         // the events' envelope uid
	Subscribers int    `json:"subscribers"` // subscriber twins whose leases matched
	Sent        int    `json:"sent"`        // envelopes handed to a relay
	Failed      int    `json:"failed"`      // not sent (dead-lettered)
}

// SubscribeResult is the answer to a subscribe.
type SubscribeResult struct {
	Twin    uint32 `json:"twin"`
	Topic   string `json:"topic"`
	Lease   int64  `json:"lease"`   // seconds granted by the owner
	Expires int64  `json:"expires"` // unix seconds; the peer renews before then
}

// UnsubscribeResult is the answer to an unsubscribe.
type UnsubscribeResult struct {
	Removed bool `json:"removed"`
}

// TopicEvent is what a subscriber's peer pushes on a subscription's queue.
type TopicEvent struct {
	Version int    `json:"ver"`
	UID     string `json:"uid"`     // the event's envelope uid (same for every subscriber)
	Owner   uint32 `json:"owner"`   // the publishing twin
	Topic   string `json:"topic"`   // the topic name
	Pattern string `json:"pattern"` // the subscription's pattern it matched
	Data    string `json:"dat"`     // base64 payload
	Schema  string `json:"shm"`
	Public  bool   `json:"public"`  // it came in plain text
	Confirm bool   `json:"confirm"` // the publisher asked for an acknowledgement
	Now     int64  `json:"now"`     // the envelope's timestamp, unix seconds
}

// Payload decodes Data.
func (e *TopicEvent) Payload() ([]byte, error) { return decode(e.Data) }

// DecodeTopicRequest parses a TopicRequest and checks the fields every
// operation needs; the peer checks topic names and the rest.
func DecodeTopicRequest(b []byte) (*TopicRequest, error) {
	var r TopicRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	if r.Version != Version {
		return &r, fmt.Errorf("%w: ver must be %d, not %d", ErrBadMessage, Version, r.Version)
	}
	switch r.Op {
	case OpPublish:
		if _, err := decode(r.Data); err != nil {
			return &r, fmt.Errorf("%w: %v", ErrBadMessage, err)
		}
		if r.Expiration < 0 {
			return &r, fmt.Errorf("%w: exp must not be negative", ErrBadMessage)
		}
	case OpSubscribe, OpUnsubscribe:
		if r.Twin == 0 {
			return &r, fmt.Errorf("%w: %s needs twin (the topic's owner)", ErrBadMessage, r.Op)
		}
		if r.Queue == "" {
			return &r, fmt.Errorf("%w: %s needs queue (where events go)", ErrBadMessage, r.Op)
		}
		switch r.Level {
		case "", LevelAtMostOnce, LevelConfirmed:
		default:
			return &r, fmt.Errorf("%w: level must be %q or %q, not %q", ErrBadMessage, LevelAtMostOnce, LevelConfirmed, r.Level)
		}
		if r.Lease < 0 {
			return &r, fmt.Errorf("%w: lease must not be negative", ErrBadMessage)
		}
	default:
		return &r, fmt.Errorf("%w: op must be publish, subscribe or unsubscribe, not %q", ErrBadMessage, r.Op)
	}
	if r.Topic == "" {
		return &r, fmt.Errorf("%w: topic is empty", ErrBadMessage)
	}
	return &r, nil
}

// PublishOptions tune Client.Publish. Nil means defaults.
type PublishOptions struct {
	Public  bool          // send in plain text, not encrypted per subscriber
	Confirm bool          // each subscriber's peer acknowledges; failures are dead-lettered
	TTL     time.Duration // default 60s
	Schema  string
}

// Publish publishes data on topic (a topic this twin owns) through the
// local peer and returns what the peer did with it.
func (c *Client) Publish(ctx context.Context, topic string, data []byte, opts *PublishOptions) (*PublishResult, error) {
	var o PublishOptions
	if opts != nil {
		o = *opts
	}
	req := TopicRequest{Op: OpPublish, Topic: topic, Data: encode(data), Public: o.Public,
		Confirm: o.Confirm, Expiration: int64(o.TTL / time.Second), Schema: o.Schema}
	var res PublishResult
	return &res, c.topicOp(ctx, &req, &res)
}

// SubscribeOptions tune Client.Subscribe. Nil means defaults.
type SubscribeOptions struct {
	Level string        // LevelAtMostOnce (default) or LevelConfirmed
	Lease time.Duration // asked of the owner; default 300s
}

// Subscribe asks the local peer to subscribe to owner's topics matching
// pattern (MQTT wildcards + and #), pushing events on queue as
// TopicEvent JSON (see NextEvent). The peer keeps the subscription, and
// renews its lease, until Unsubscribe.
func (c *Client) Subscribe(ctx context.Context, owner uint32, pattern, queue string, opts *SubscribeOptions) (*SubscribeResult, error) {
	var o SubscribeOptions
	if opts != nil {
		o = *opts
	}
	req := TopicRequest{Op: OpSubscribe, Twin: owner, Topic: pattern, Queue: queue, Level: o.Level,
		Lease: int64(o.Lease / time.Second)}
	var res SubscribeResult
	return &res, c.topicOp(ctx, &req, &res)
}

// Unsubscribe ends a subscription made with Subscribe.
func (c *Client) Unsubscribe(ctx context.Context, owner uint32, pattern, queue string) (bool, error) {
	req := TopicRequest{Op: OpUnsubscribe, Twin: owner, Topic: pattern, Queue: queue}
	var res UnsubscribeResult
	err := c.topicOp(ctx, &req, &res)
	return res.Removed, err
}

// NextEvent pops the next event from queue, waiting up to wait (0 waits
// until ctx ends). It returns nil, nil when none came in time.
func (c *Client) NextEvent(ctx context.Context, queue string, wait time.Duration) (*TopicEvent, error) {
	res, err := c.rdb.BRPop(ctx, wait, queue).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return nil, err
	}
	var ev TopicEvent
	if err := json.Unmarshal([]byte(res[1]), &ev); err != nil {
		return nil, fmt.Errorf("redisapi: bad event on %s: %w", queue, err)
	}
	return &ev, nil
}

// topicOp pushes req and waits (up to a minute, or ctx) for its answer,
// decoded into out.
func (c *Client) topicOp(ctx context.Context, req *TopicRequest, out any) error {
	id := newID()
	req.Version, req.Ref, req.ReplyTo = Version, id, "msgbus.reply."+id
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := c.rdb.LPush(ctx, QueueTopics, b).Err(); err != nil {
		return fmt.Errorf("redisapi: push %s: %w", req.Op, err)
	}
	defer c.rdb.Del(context.WithoutCancel(ctx), req.ReplyTo)
	res, err := c.rdb.BRPop(ctx, time.Minute, req.ReplyTo).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return fmt.Errorf("redisapi: %s: %w (is rmb-peer running?)", req.Op, ErrTimeout)
		}
		return err
	}
	var ans IncomingResponse
	if err := json.Unmarshal([]byte(res[1]), &ans); err != nil {
		return fmt.Errorf("redisapi: bad answer to %s: %w", req.Op, err)
	}
	if ans.Error != nil {
		return ans.Error
	}
	dat, err := ans.Payload()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(dat, out); err != nil {
		return fmt.Errorf("redisapi: bad answer to %s: %w", req.Op, err)
	}
	return nil
}

// DecodeData decodes a dat field (standard base64).
func DecodeData(s string) ([]byte, error) { return decode(s) }
