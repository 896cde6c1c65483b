package peer

import (
	"context"
	"encoding/json"
	"errors"
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
	var (
		res any
	)
	switch req.Op {
	case redisapi.OpPublish:
		data, _ := redisapi.DecodeData(req.Data)
		res, err = p.Publish(ctx, req.Topic, data, &PublishOptions{Public: req.Public, Confirm: req.Confirm,
			TTL: time.Duration(req.Expiration) * time.Second, Schema: req.Schema})
	case redisapi.OpSubscribe:
		var s *Subscription
		s, err = p.Subscribe(ctx, req.Twin, req.Topic, &SubscribeOptions{Level: req.Level,
			Lease: time.Duration(req.Lease) * time.Second, Queue: req.Queue})
		if err == nil {
			res = s.Result
		}
	case redisapi.OpUnsubscribe:
		var removed bool
		removed, err = p.Unsubscribe(ctx, req.Twin, req.Topic, req.Queue)
		res = redisapi.UnsubscribeResult{Removed: removed}
	}
	if err != nil && ctx.Err() != nil {
		return false // stopping: handled again by the next run
	}
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e):
		case errors.Is(err, ErrBadTopic), errors.Is(err, ErrSubscription):
			e = &Error{Code: envelope.CodeBadPayload, Message: err.Error()}
		default:
			e = &Error{Code: envelope.CodeInternal, Message: err.Error()}
		}
		answer(nil, e)
	} else {
		answer(res, nil)
	}
	p.finish(TopicsProcessing, raw, "")
	return true
}
