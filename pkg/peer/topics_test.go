package peer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
)

func TestTopicNamesAndMatch(t *testing.T) {
	for _, ok := range []string{"a", "alerts/disk", "a.b/c-d/e_f:g@h=i~j", strings.Repeat("x", peer.MaxTopicLen)} {
		if err := peer.CheckTopic(ok); err != nil {
			t.Errorf("CheckTopic(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/+", "a/#", "#", "a//b", "/a", "a/", "a b", "a+", "a#b", "é",
		strings.Repeat("x", peer.MaxTopicLen+1), strings.Repeat("a/", peer.MaxTopicLevels) + "a"} {
		if err := peer.CheckTopic(bad); !errors.Is(err, peer.ErrBadTopic) {
			t.Errorf("CheckTopic(%q) = %v, want ErrBadTopic", bad, err)
		}
	}
	for _, ok := range []string{"#", "+", "a/+/c", "a/#", "+/+/#"} {
		if err := peer.CheckTopicPattern(ok); err != nil {
			t.Errorf("CheckTopicPattern(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"#/a", "a/#/b", "a+/b", "a/b#", "", "a//+"} {
		if err := peer.CheckTopicPattern(bad); !errors.Is(err, peer.ErrBadTopic) {
			t.Errorf("CheckTopicPattern(%q) = %v, want ErrBadTopic", bad, err)
		}
	}
	cases := []struct {
		pattern, topic string
		want           bool
	}{
		{"#", "a", true}, {"#", "a/b/c", true}, {"a/#", "a", true}, {"a/#", "a/b/c", true},
		{"a/#", "b", false}, {"+", "a", true}, {"+", "a/b", false}, {"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false}, {"a/+", "a", false}, {"a/b", "a/b", true}, {"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false}, {"+/#", "x", true},
	}
	for _, c := range cases {
		if got := peer.MatchTopic(c.pattern, c.topic); got != c.want {
			t.Errorf("MatchTopic(%q, %q) = %v, want %v", c.pattern, c.topic, got, c.want)
		}
	}
}

func TestTopicPolicyParse(t *testing.T) {
	pol, err := peer.ParsePolicy([]byte(`
topics:
  - topics: ["secret/#"]
    allow: [7]
  - topics: ["public/+"]
    deny: [9]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		twin    uint32
		pattern string
		want    bool
	}{
		{7, "secret/x", true}, {8, "secret/x", false}, {8, "#", false}, {8, "public/a", true},
		{9, "public/a", false}, {9, "other", true}, {8, "+/x", false},
	} {
		if got := pol.AllowSubscribe(c.twin, c.pattern); got != c.want {
			t.Errorf("AllowSubscribe(%d, %q) = %v, want %v", c.twin, c.pattern, got, c.want)
		}
	}
	for _, bad := range []string{"topics: [{topics: []}]", "topics: [{topics: ['a/#/b']}]", "topics: [{topics: ['a'], allow: [x]}]"} {
		if _, err := peer.ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
}

// topicOp pushes a TopicRequest on the peer's Redis, as a client in any
// language would, and returns its answer.
func topicOp(t *testing.T, tp *testPeer, req map[string]any) map[string]any {
	t.Helper()
	ret := fmt.Sprintf("msgbus.reply.t%d", time.Now().UnixNano())
	req["ver"], req["ret"], req["ref"] = 1, ret, "r-"+ret
	b, _ := json.Marshal(req)
	if err := tp.rdb.LPush(context.Background(), redisapi.QueueTopics, b).Err(); err != nil {
		t.Fatal(err)
	}
	return popJSON(t, tp.rdb, ret, 30*time.Second)
}

func answerData(t *testing.T, ans map[string]any, out any) {
	t.Helper()
	if ans["err"] != nil {
		t.Fatalf("error answer: %v", ans["err"])
	}
	if err := json.Unmarshal([]byte(unb64(t, ans["dat"])), out); err != nil {
		t.Fatal(err)
	}
}

func nextEvent(t *testing.T, s *peer.Subscription) peer.Event {
	t.Helper()
	select {
	case ev := <-s.Events():
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return peer.Event{}
}

func noEvent(t *testing.T, s *peer.Subscription) {
	t.Helper()
	select {
	case ev := <-s.Events():
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// Subscribe through the Go API and the Redis JSON API, publish through
// both, with wildcards; events are encrypted unless the topic is public.
func TestTopicSubscribePublish(t *testing.T) {
	s := newStack(t, 1)
	owner, goSub, redisSub := s.newPeer(), s.newPeer(), s.newPeer()
	ctx := context.Background()

	sub, err := goSub.Subscribe(ctx, owner.Twin(), "alerts/+", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Result.Lease != 300 {
		t.Errorf("lease granted %d, want 300", sub.Result.Lease)
	}
	var sr redisapi.SubscribeResult
	answerData(t, topicOp(t, redisSub, map[string]any{"op": "subscribe", "twin": owner.Twin(), "topic": "#", "queue": "my.events"}), &sr)
	if sr.Twin != owner.Twin() || sr.Topic != "#" {
		t.Errorf("subscribe answer %+v", sr)
	}
	waitFor(t, 20*time.Second, func() error {
		if l := owner.Leases(); len(l) != 2 {
			return fmt.Errorf("leases %v", l)
		}
		return nil
	})

	// Publish through the owner's Redis.
	var pr redisapi.PublishResult
	answerData(t, topicOp(t, owner, map[string]any{"op": "publish", "topic": "alerts/disk", "dat": b64(`{"full":97}`), "shm": "application/json"}), &pr)
	if pr.Subscribers != 2 || pr.Sent != 2 || pr.UID == "" {
		t.Errorf("publish result %+v, want 2 subscribers, 2 sent", pr)
	}
	ev := nextEvent(t, sub)
	if ev.Topic != "alerts/disk" || string(ev.Data) != `{"full":97}` || ev.Owner != owner.Twin() || ev.Public || ev.Pattern != "alerts/+" || ev.UID != pr.UID || ev.Schema != "application/json" {
		t.Errorf("go event %+v", ev)
	}
	m := popJSON(t, redisSub.rdb, "my.events", 30*time.Second)
	if m["topic"] != "alerts/disk" || unb64(t, m["dat"]) != `{"full":97}` || m["public"] != false || m["pattern"] != "#" || m["uid"] != pr.UID {
		t.Errorf("redis event %v", m)
	}

	// Through the Go API: a topic only "#" matches, public.
	res, err := owner.Publish(ctx, "metrics/cpu", []byte("42"), &peer.PublishOptions{Public: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Subscribers != 1 {
		t.Errorf("publish to metrics/cpu: %+v, want 1 subscriber", res)
	}
	m = popJSON(t, redisSub.rdb, "my.events", 30*time.Second)
	if m["topic"] != "metrics/cpu" || m["public"] != true || unb64(t, m["dat"]) != "42" {
		t.Errorf("public event %v", m)
	}
	// Nobody matches: nothing sent.
	if res, err := owner.Publish(ctx, "alerts", nil, nil); err != nil || res.Subscribers != 1 {
		t.Errorf("publish alerts: %+v %v, want only # to match", res, err)
	}
	popJSON(t, redisSub.rdb, "my.events", 30*time.Second)
	noEvent(t, sub)

	// Unsubscribe through Redis: the owner forgets the lease.
	var ur redisapi.UnsubscribeResult
	answerData(t, topicOp(t, redisSub, map[string]any{"op": "unsubscribe", "twin": owner.Twin(), "topic": "#", "queue": "my.events"}), &ur)
	if !ur.Removed {
		t.Error("unsubscribe: not removed")
	}
	waitFor(t, 20*time.Second, func() error {
		if l := owner.Leases(); len(l) != 1 {
			return fmt.Errorf("leases %v", l)
		}
		return nil
	})
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		if l := owner.Leases(); len(l) != 0 {
			return fmt.Errorf("leases %v", l)
		}
		return nil
	})
}

// The owner's policy refuses a subscriber, and filters published topics
// for a subscriber whose pattern covers a denied topic.
func TestTopicOwnerDeny(t *testing.T) {
	s := newStack(t, 1)
	owner, denied, other := s.newPeer(), s.newPeer(), s.newPeer()
	ctx := context.Background()
	pol, err := peer.ParsePolicy(fmt.Appendf(nil, `
topics:
  - topics: ["secret/#"]
    allow: [%d]
`, other.Twin()))
	if err != nil {
		t.Fatal(err)
	}
	owner.ReloadPolicy(pol)
	_, err = denied.Subscribe(ctx, owner.Twin(), "secret/keys", nil)
	var e *peer.Error
	if !errors.As(err, &e) || e.Code != envelope.CodeDenied {
		t.Fatalf("denied subscribe: %v, want a 401 *peer.Error", err)
	}
	if _, err := denied.Subscribe(ctx, owner.Twin(), "#", nil); !errors.As(err, &e) || e.Code != envelope.CodeDenied {
		t.Fatalf("denied # subscribe: %v, want 401", err)
	}
	okSub, err := denied.Subscribe(ctx, owner.Twin(), "news/+", nil)
	if err != nil {
		t.Fatal(err)
	}
	all, err := other.Subscribe(ctx, owner.Twin(), "#", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A policy change after subscribing still holds at publish time.
	pol2, _ := peer.ParsePolicy(fmt.Appendf(nil, "topics:\n  - topics: [\"news/private\"]\n    deny: [%d]\n", denied.Twin()))
	owner.ReloadPolicy(pol2)
	if res, _ := owner.Publish(ctx, "news/private", []byte("x"), nil); res.Subscribers != 1 {
		t.Errorf("news/private went to %d subscribers, want 1 (the denied twin filtered)", res.Subscribers)
	}
	if ev := nextEvent(t, all); ev.Topic != "news/private" {
		t.Errorf("event %+v", ev)
	}
	if res, _ := owner.Publish(ctx, "news/public", []byte("y"), nil); res.Subscribers != 2 {
		t.Errorf("news/public went to %d subscribers, want 2", res.Subscribers)
	}
	if ev := nextEvent(t, okSub); ev.Topic != "news/public" {
		t.Errorf("event %+v, want news/public first (news/private was filtered)", ev)
	}
}

// A lease not renewed expires at the owner; one renewed does not.
func TestTopicLeaseExpiry(t *testing.T) {
	s := newStack(t, 1)
	owner := s.newPeer(func(o *peer.Options) { o.Topics.MinLease = time.Second })
	staying, leaving := s.newPeer(), s.newPeer()
	ctx := context.Background()
	if _, err := staying.Subscribe(ctx, owner.Twin(), "a", &peer.SubscribeOptions{Lease: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := leaving.Subscribe(ctx, owner.Twin(), "a", &peer.SubscribeOptions{Lease: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	leaving.stop()
	want := []string{fmt.Sprintf("%d/a", staying.Twin())}
	waitFor(t, 30*time.Second, func() error {
		if l := owner.Leases(); !slices.Equal(l, want) {
			return fmt.Errorf("leases %v, want %v", l, want)
		}
		return nil
	})
	// Gone from Redis as well.
	waitFor(t, 30*time.Second, func() error {
		n, err := owner.rdb.HLen(ctx, peer.LeaseHash).Result()
		if err != nil || n != 1 {
			return fmt.Errorf("%d leases in redis (%v)", n, err)
		}
		return nil
	})
	// The one renewed outlives several terms.
	time.Sleep(5 * time.Second)
	if l := owner.Leases(); !slices.Equal(l, want) {
		t.Errorf("leases %v after 5s, want %v (renewed)", l, want)
	}
}

// Leases survive a restart of the publisher's peer; Redis subscriptions
// survive a restart of the subscriber's peer.
func TestTopicRestarts(t *testing.T) {
	s := newStack(t, 1)
	ownerID := newIdentity(t)
	ownerDB := int(s.nextDB.Add(1))
	owner := s.startPeer(ownerID, ownerDB)
	subID := newIdentity(t)
	subDB := int(s.nextDB.Add(1))
	sub := s.startPeer(subID, subDB)
	ctx := context.Background()
	if _, err := sub.Subscribe(ctx, owner.Twin(), "jobs/#", &peer.SubscribeOptions{Queue: "jobs.q"}); err != nil {
		t.Fatal(err)
	}
	owner.stop()
	owner = s.startPeer(ownerID, ownerDB)
	// Leases are loaded as the peer starts; Publish waits for them.
	res, err := owner.Publish(ctx, "jobs/1", []byte("one"), nil)
	if err != nil || res.Subscribers != 1 {
		t.Fatalf("publish after owner restart: %+v %v, want 1 subscriber", res, err)
	}
	if m := popJSON(t, sub.rdb, "jobs.q", 30*time.Second); unb64(t, m["dat"]) != "one" {
		t.Errorf("event %v", m)
	}
	sub.stop()
	sub = s.startPeer(subID, subDB)
	waitFor(t, 20*time.Second, func() error {
		if got := sub.Subscriptions(); len(got) != 1 {
			return fmt.Errorf("subscriptions after restart: %v", got)
		}
		return nil
	})
	if _, err := owner.Publish(ctx, "jobs/2", []byte("two"), nil); err != nil {
		t.Fatal(err)
	}
	if m := popJSON(t, sub.rdb, "jobs.q", 30*time.Second); unb64(t, m["dat"]) != "two" {
		t.Errorf("event %v", m)
	}
}

// Confirmed delivery: a subscriber offline past the TTL is dead-lettered
// at the publisher with the reason; the online one acknowledges.
func TestTopicConfirmedDeadLetter(t *testing.T) {
	s := newStack(t, 1)
	owner, online, offline := s.newPeer(), s.newPeer(), s.newPeer()
	ctx := context.Background()
	onSub, err := online.Subscribe(ctx, owner.Twin(), "orders/+", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := offline.Subscribe(ctx, owner.Twin(), "orders/#", &peer.SubscribeOptions{Level: redisapi.LevelConfirmed}); err != nil {
		t.Fatal(err)
	}
	offline.stop()
	undelivered := make(chan uint32, 4)
	res, err := owner.Publish(ctx, "orders/7", []byte("o7"), &peer.PublishOptions{Confirm: true, TTL: 3 * time.Second,
		OnUndelivered: func(twin uint32, e *peer.Error) { undelivered <- twin }})
	if err != nil || res.Subscribers != 2 || res.Sent != 2 {
		t.Fatalf("publish: %+v %v", res, err)
	}
	if ev := nextEvent(t, onSub); !ev.Confirm || string(ev.Data) != "o7" {
		t.Errorf("event %+v", ev)
	}
	select {
	case twin := <-undelivered:
		if twin != offline.Twin() {
			t.Errorf("undelivered to %d, want %d", twin, offline.Twin())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("offline subscriber not reported undelivered")
	}
	dl := popJSON(t, owner.rdb, redisapi.QueueDeadLetter, 30*time.Second)
	if dl["queue"] != redisapi.QueueTopics || uint32(dl["dst"].(float64)) != offline.Twin() || dl["uid"] != res.UID ||
		!strings.Contains(dl["reason"].(string), "not confirmed") {
		t.Errorf("dead letter %v", dl)
	}
	if n := counter(t, owner.Peer, "rmb_peer_topic_events_confirmed_total"); n != 1 {
		t.Errorf("%v events confirmed, want 1 (the online subscriber's)", n)
	}
	select {
	case twin := <-undelivered:
		t.Errorf("twin %d reported undelivered too", twin)
	default:
	}
}

// Bad input at every entry point gets a clear error.
func TestTopicBadInput(t *testing.T) {
	s := newStack(t, 1)
	owner, sub := s.newPeer(), s.newPeer()
	ctx := context.Background()

	// Go API.
	if _, err := owner.Publish(ctx, "a/+", nil, nil); !errors.Is(err, peer.ErrBadTopic) {
		t.Errorf("publish a/+: %v", err)
	}
	if _, err := sub.Subscribe(ctx, owner.Twin(), "a/#/b", nil); !errors.Is(err, peer.ErrBadTopic) {
		t.Errorf("subscribe a/#/b: %v", err)
	}
	if _, err := sub.Subscribe(ctx, owner.Twin(), "a", &peer.SubscribeOptions{Level: "twice"}); !errors.Is(err, peer.ErrSubscription) {
		t.Errorf("subscribe level twice: %v", err)
	}
	if _, err := sub.Subscribe(ctx, owner.Twin(), "a", &peer.SubscribeOptions{Queue: "msgbus.system.local"}); !errors.Is(err, peer.ErrSubscription) {
		t.Errorf("subscribe to the peer's own list: %v", err)
	}
	if _, err := sub.Subscribe(ctx, 0, "a", nil); !errors.Is(err, peer.ErrSubscription) {
		t.Errorf("subscribe to twin 0: %v", err)
	}

	// Redis JSON API: each answered with an error, and dead-lettered
	// when malformed.
	for _, c := range []struct {
		req  map[string]any
		code float64
		want string
	}{
		{map[string]any{"op": "publish", "topic": "a/#", "dat": ""}, 101, "wildcard"},
		{map[string]any{"op": "publish", "topic": "a", "dat": "!!"}, 101, "base64"},
		{map[string]any{"op": "explode", "topic": "a"}, 101, "op must be"},
		{map[string]any{"op": "subscribe", "topic": "a"}, 101, "needs twin"},
		{map[string]any{"op": "subscribe", "twin": owner.Twin(), "topic": "a"}, 101, "needs queue"},
		{map[string]any{"op": "subscribe", "twin": owner.Twin(), "topic": "a b", "queue": "q"}, 101, "bad topic"},
		{map[string]any{"op": "subscribe", "twin": owner.Twin(), "topic": "a", "queue": "q", "level": "x"}, 101, "level"},
	} {
		ans := topicOp(t, sub, c.req)
		e, _ := ans["err"].(map[string]any)
		if e == nil || e["code"] != c.code || !strings.Contains(e["message"].(string), c.want) {
			t.Errorf("%v: answer %v, want code %v naming %q", c.req, ans, c.code, c.want)
		}
	}
	if err := sub.rdb.LPush(ctx, redisapi.QueueTopics, "not json").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		all, _ := sub.rdb.LRange(ctx, redisapi.QueueDeadLetter, 0, -1).Result()
		for _, d := range all {
			if strings.Contains(d, "not json") {
				return nil
			}
		}
		return fmt.Errorf("%d dead letters, none for the malformed request", len(all))
	})

	// On the wire: a raw twin sends malformed built-ins and events.
	raw := s.newRawTwin(true, 0)
	for _, c := range []struct {
		cmd, payload string
		code         uint32
	}{
		{peer.CmdSubscribe, "not json", envelope.CodeBadPayload},
		{peer.CmdSubscribe, `{"topic":"a/#/b"}`, envelope.CodeBadPayload},
		{peer.CmdSubscribe, `{"topic":"a","level":"maybe"}`, envelope.CodeBadPayload},
		{peer.CmdSubscribe, `{"topic":"a","lease":-1}`, envelope.CodeBadPayload},
		{peer.CmdRenew, `{"topic":""}`, envelope.CodeBadPayload},
		{peer.CmdEvent, `{"topic":"a","dat":"","confirm":true}`, envelope.CodeNotFound}, // not subscribed
		{peer.CmdEvent, `{"topic":"a/+","confirm":true}`, envelope.CodeBadPayload},
	} {
		uid := fmt.Sprintf("bad-%d", time.Now().UnixNano())
		raw.send(raw.request(uid, c.cmd, []byte(c.payload), owner.Twin()))
		got := raw.recv(30 * time.Second)
		if got.Uid != uid || !got.IsError() || got.GetError().GetCode() != c.code {
			t.Errorf("%s %s: got %v, want error %d", c.cmd, c.payload, got, c.code)
		}
	}
	// Bounds: a twin may hold MaxLeasesPerTwin leases (the default
	// owner's is 64; this one allows 2).
	small := s.newPeer(func(o *peer.Options) { o.Topics.MaxLeasesPerTwin = 2 })
	for i, want := range []uint32{0, 0, envelope.CodeRateLimited} {
		_, err := sub.Subscribe(ctx, small.Twin(), fmt.Sprintf("t%d", i), nil)
		var e *peer.Error
		if want == 0 && err != nil || want != 0 && (!errors.As(err, &e) || e.Code != want) {
			t.Errorf("subscription %d: %v, want code %d", i, err, want)
		}
	}
}

// A subscriber on another relay: subscribe, renew and events cross the
// federation between the two relays, confirmed events are acknowledged.
func TestTopicFederatedSubscriber(t *testing.T) {
	s := newStack(t, 2)
	owner := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(0); o.Topics.MinLease = time.Second })
	sub := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(1) })
	ctx := context.Background()
	ch, err := sub.Subscribe(ctx, owner.Twin(), "fed/+", &peer.SubscribeOptions{Level: redisapi.LevelConfirmed, Lease: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	undelivered := make(chan uint32, 1)
	res, err := owner.Publish(ctx, "fed/x", []byte("across"), &peer.PublishOptions{TTL: 20 * time.Second,
		OnUndelivered: func(twin uint32, e *peer.Error) { undelivered <- twin }})
	if err != nil || res.Sent != 1 {
		t.Fatalf("publish: %+v %v", res, err)
	}
	if ev := nextEvent(t, ch); string(ev.Data) != "across" || !ev.Confirm {
		t.Errorf("event %+v", ev)
	}
	// The lease is renewed across the federation past its term.
	time.Sleep(4 * time.Second)
	if l := owner.Leases(); len(l) != 1 {
		t.Errorf("leases after 4s: %v, want the renewed one", l)
	}
	waitFor(t, 20*time.Second, func() error {
		if n := counter(t, owner.Peer, "rmb_peer_topic_events_confirmed_total"); n != 1 {
			return fmt.Errorf("%v confirmed events, want 1", n)
		}
		return nil
	})
	select {
	case twin := <-undelivered:
		t.Errorf("confirmed event reported undelivered to %d", twin)
	default:
	}
}

// counter reads a counter without labels from the peer's registry.
func counter(t *testing.T, p *peer.Peer, name string) float64 {
	t.Helper()
	mfs, err := p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}
