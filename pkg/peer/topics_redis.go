package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

// TopicsProcessing holds the messages of redisapi.QueueTopics the peer
// popped and has not handled yet (popLoop).
const TopicsProcessing = redisapi.QueueTopics + ".processing"

// handleTopicMsg serves one redisapi.TopicRequest: it publishes,
// subscribes or unsubscribes and pushes the answer on the request's ret
// queue. A malformed request is dead-lettered and answered with an error
// when it names a ret queue. It returns whether it finished the message.
func (p *Peer) handleTopicMsg(ctx context.Context, raw string) bool {
	req, err := redisapi.DecodeTopicRequest([]byte(raw))
	answer := func(data any, e *Error) {
		if req == nil || req.ReplyTo == "" {
			return
		}
		r := &Response{Source: p.Twin(), Timestamp: time.Now(), Err: e}
		if e == nil {
			r.Data, _ = json.Marshal(data)
			r.Schema = "application/json"
		}
		p.deliverToQueue(req.ReplyTo, req.Ref, time.Now().Add(time.Minute))(ctx, r, nil)
	}
	if err != nil {
		code := uint32(envelope.CodeMalformed)
		d := &DeadLetter{Queue: redisapi.QueueTopics, Message: raw, Reason: err.Error(), Code: code}
		if req != nil {
			d.Ref, d.Ret, d.Code = req.Ref, req.ReplyTo, envelope.CodeBadPayload
		}
		p.deadLetter(ctx, d)
		answer(nil, &Error{Code: d.Code, Message: err.Error()})
		p.finish(TopicsProcessing, raw, "")
		return true
	}
	res, err := p.doTopic(ctx, req)
	if err != nil && ctx.Err() != nil {
		return false // stopping: handled again by the next run
	}
	if err != nil {
		answer(nil, topicError(err))
	} else {
		answer(res, nil)
	}
	p.finish(TopicsProcessing, raw, "")
	return true
}

// doTopic carries out a topic request of a local client (Redis or HTTP)
// and returns its result: PublishResult, SubscribeResult or
// UnsubscribeResult.
func (p *Peer) doTopic(ctx context.Context, req *redisapi.TopicRequest) (any, error) {
	switch req.Op {
	case redisapi.OpPublish:
		data, _ := redisapi.DecodeData(req.Data)
		return p.Publish(ctx, req.Topic, data, &PublishOptions{Public: req.Public, Confirm: req.Confirm,
			TTL: time.Duration(req.Expiration) * time.Second, Schema: req.Schema})
	case redisapi.OpSubscribe:
		s, err := p.Subscribe(ctx, req.Twin, req.Topic, &SubscribeOptions{Level: req.Level,
			Lease: time.Duration(req.Lease) * time.Second, Queue: req.Queue})
		if err != nil {
			return nil, err
		}
		return s.Result, nil
	case redisapi.OpUnsubscribe:
		removed, err := p.Unsubscribe(ctx, req.Twin, req.Topic, req.Queue)
		return redisapi.UnsubscribeResult{Removed: removed}, err
	}
	return nil, fmt.Errorf("%w: unknown op %q", ErrSubscription, req.Op)
}

// topicError is the error answer of a failed topic request.
func topicError(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, ErrBadTopic), errors.Is(err, ErrSubscription):
		return &Error{Code: envelope.CodeBadPayload, Message: err.Error()}
	}
	return &Error{Code: envelope.CodeInternal, Message: err.Error()}
}
