package peer

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// Topics over the local HTTP API:
//
//	POST /topics          body: a topic request, the JSON of the Redis
//	                      API's msgbus.system.topics (docs/protocol.md
//	                      §10; ret is not needed); answers its result
//	                      (publish, subscribe, unsubscribe) or an error.
//	                      A subscribe without queue is held by the HTTP
//	                      API, and its events are read with /events.
//	GET  /events?twin=OWNER&topic=PATTERN[&wait=S]
//	                      long poll: 200 with the next event of that held
//	                      subscription (redisapi.TopicEvent), 204 after S
//	                      seconds without one, 404 without the
//	                      subscription
//
// A held subscription nobody polled for SubscriptionIdle is unsubscribed;
// at most MaxSubscriptions are held (then 429).

// httpSubs are the subscriptions the HTTP API holds for its clients.
type httpSubs struct {
	mu   sync.Mutex
	subs map[string]*httpSub // by owner and pattern
}

type httpSub struct {
	s        *Subscription
	lastPoll time.Time
}

func httpSubKey(owner uint32, pattern string) string {
	return strconv.FormatUint(uint64(owner), 10) + " " + pattern
}

// topics is POST /topics.
func (a *HTTPAPI) topics(w http.ResponseWriter, r *http.Request) {
	var req redisapi.TopicRequest
	if !a.ReadJSON(w, r, &req) {
		return
	}
	if req.Version == 0 {
		req.Version = redisapi.Version
	}
	// The checks of the Redis API, but a subscription needs no queue here.
	check := req
	if check.Queue == "" {
		check.Queue = "held-by-http"
	}
	b, _ := json.Marshal(&check)
	if _, err := redisapi.DecodeTopicRequest(b); err != nil {
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	held := req.Queue == "" && req.Op != redisapi.OpPublish
	if held {
		if err := CheckTopicPattern(req.Topic); err != nil {
			a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
			WriteError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if held && req.Op == redisapi.OpUnsubscribe {
		a.unhold(r.Context(), w, req.Twin, req.Topic)
		return
	}
	if held && !a.canHold(req.Twin, req.Topic) {
		a.refused.WithLabelValues(httpRefusedSubs).Inc()
		WriteError(w, http.StatusTooManyRequests, fmt.Sprintf("at most %d subscriptions held by the HTTP API", a.o.MaxSubscriptions))
		return
	}
	release, ok := a.Wait(w, time.Now().Add(2*time.Minute))
	if !ok {
		return
	}
	defer release()
	if held {
		s, err := a.p.Subscribe(r.Context(), req.Twin, req.Topic, &SubscribeOptions{Level: req.Level,
			Lease: time.Duration(req.Lease) * time.Second})
		if err != nil {
			writeRMBError(w, topicError(err))
			return
		}
		a.hold(req.Twin, req.Topic, s)
		WriteJSON(w, http.StatusOK, s.Result)
		return
	}
	res, err := a.p.doTopic(r.Context(), &req)
	if err != nil {
		writeRMBError(w, topicError(err))
		return
	}
	WriteJSON(w, http.StatusOK, res)
}

// events is GET /events?twin=OWNER&topic=PATTERN&wait=S.
func (a *HTTPAPI) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	owner, err := strconv.ParseUint(q.Get("twin"), 10, 32)
	if err != nil || owner == 0 {
		a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
		WriteError(w, http.StatusBadRequest, "twin: want the topic owner's twin id")
		return
	}
	wait, ok := a.waitParam(w, r)
	if !ok {
		return
	}
	key := httpSubKey(uint32(owner), q.Get("topic"))
	a.subs.mu.Lock()
	h := a.subs.subs[key]
	if h != nil {
		h.lastPoll = time.Now()
	}
	a.subs.mu.Unlock()
	if h == nil {
		WriteError(w, http.StatusNotFound, "no such subscription: POST /topics with op subscribe first")
		return
	}
	release, ok := a.Wait(w, time.Now().Add(wait))
	if !ok {
		return
	}
	defer release()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case e, open := <-h.s.Events():
		if !open {
			WriteError(w, http.StatusNotFound, "subscription ended")
			return
		}
		WriteJSON(w, http.StatusOK, redisapi.TopicEvent{Version: 1, UID: e.UID, Owner: e.Owner, Topic: e.Topic,
			Pattern: e.Pattern, Data: redisapi.EncodeData(e.Data), Schema: e.Schema, Public: e.Public,
			Confirm: e.Confirm, Now: e.Timestamp.Unix()})
	case <-t.C:
		w.WriteHeader(http.StatusNoContent)
	case <-r.Context().Done():
	}
}

// canHold says whether a subscription of owner and pattern may be held:
// it is already, or there is room.
func (a *HTTPAPI) canHold(owner uint32, pattern string) bool {
	a.subs.mu.Lock()
	defer a.subs.mu.Unlock()
	_, ok := a.subs.subs[httpSubKey(owner, pattern)]
	return ok || len(a.subs.subs) < a.o.MaxSubscriptions
}

func (a *HTTPAPI) hold(owner uint32, pattern string, s *Subscription) {
	a.subs.mu.Lock()
	defer a.subs.mu.Unlock()
	a.subs.subs[httpSubKey(owner, pattern)] = &httpSub{s: s, lastPoll: time.Now()}
	if !a.subsJanitor {
		a.subsJanitor = true
		go a.sweepSubs()
	}
}

// unhold ends a held subscription (op unsubscribe without queue).
func (a *HTTPAPI) unhold(ctx context.Context, w http.ResponseWriter, owner uint32, pattern string) {
	key := httpSubKey(owner, pattern)
	a.subs.mu.Lock()
	h := a.subs.subs[key]
	delete(a.subs.subs, key)
	a.subs.mu.Unlock()
	if h == nil {
		WriteJSON(w, http.StatusOK, redisapi.UnsubscribeResult{Removed: false})
		return
	}
	if err := h.s.Close(ctx); err != nil {
		writeRMBError(w, topicError(err))
		return
	}
	WriteJSON(w, http.StatusOK, redisapi.UnsubscribeResult{Removed: true})
}

// sweepSubs unsubscribes the held subscriptions nobody polled for
// SubscriptionIdle, until the peer stops.
func (a *HTTPAPI) sweepSubs() {
	t := time.NewTicker(min(a.o.SubscriptionIdle/2, 10*time.Second))
	defer t.Stop()
	for {
		select {
		case <-a.p.done:
			return
		case <-t.C:
		}
		var idle []*httpSub
		a.subs.mu.Lock()
		for k, h := range a.subs.subs {
			if time.Since(h.lastPoll) > a.o.SubscriptionIdle {
				idle = append(idle, h)
				delete(a.subs.subs, k)
			}
		}
		a.subs.mu.Unlock()
		for _, h := range idle {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			h.s.Close(ctx)
			cancel()
		}
	}
}

// waitParam reads the wait query parameter (whole seconds, at most
// MaxServeWait); on failure it has answered 400.
func (a *HTTPAPI) waitParam(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	wait := a.o.MaxServeWait
	if s := r.URL.Query().Get("wait"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			a.refused.WithLabelValues(httpRefusedBadJSON).Inc()
			WriteError(w, http.StatusBadRequest, "wait: want whole seconds")
			return 0, false
		}
		wait = min(time.Duration(n)*time.Second, a.o.MaxServeWait)
	}
	return wait, true
}

// writeRMBError answers an RMB error: its code in the body, and as the
// HTTP status when it is one (the 1xx codes of bad input are 400).
func writeRMBError(w http.ResponseWriter, e *Error) {
	status := int(e.Code)
	if status < 400 || status > 599 {
		status = http.StatusBadRequest
	}
	WriteJSON(w, status, map[string]any{"error": JSONError{Code: e.Code, Message: e.Message}})
}
