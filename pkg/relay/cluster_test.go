package relay

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/natstest"
	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/envelope"
)

const clusterDomain = "cluster.test"

// testCluster is three relay instances of one domain, each on its own node
// of a real three-node NATS cluster, sharing one real redis-server.
type testCluster struct {
	reg    *testRegistrar
	rdb    *redis.Client // the shared Redis
	relays []*testRelay
	stores []*hookStore
}

// hookStore is the shared RedisStore with hooks to stage races.
type hookStore struct {
	Store
	mu     sync.Mutex
	onPush func(SessionKey)
	onPop  func(SessionKey, int)
}

func (h *hookStore) Push(ctx context.Context, k SessionKey, m Message) error {
	h.mu.Lock()
	f := h.onPush
	h.mu.Unlock()
	if f != nil {
		f(k)
	}
	return h.Store.Push(ctx, k, m)
}

func (h *hookStore) Pop(ctx context.Context, k SessionKey, n int, now time.Time) ([]Message, int, error) {
	msgs, exp, err := h.Store.Pop(ctx, k, n, now)
	h.mu.Lock()
	f := h.onPop
	h.mu.Unlock()
	if f != nil && err == nil {
		f(k, len(msgs))
	}
	return msgs, exp, err
}

func startCluster(t *testing.T) *testCluster {
	t.Helper()
	return startClusterOn(t, natstest.StartCluster(t, 3), false)
}

// startClusterOn starts the relays on nc: instance i on node i, or, with
// all, on every node (NATS picks one and fails over to the others).
func startClusterOn(t *testing.T, nc *natstest.Cluster, all bool) *testCluster {
	t.Helper()
	return startClusterWith(t, nc, all, nil)
}

// startClusterWith is startClusterOn with more options for every instance.
func startClusterWith(t *testing.T, nc *natstest.Cluster, all bool, mod func(*Options)) *testCluster {
	t.Helper()
	rs := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { rdb.Close() })
	c := &testCluster{reg: startRegistrar(t), rdb: rdb}
	for i, n := range nc.Nodes {
		hs := &hookStore{Store: NewRedisStore(rdb, nil)}
		o := &Options{
			Domains:  []string{clusterDomain},
			NATS:     natsURLs(nc, n, all),
			Instance: fmt.Sprintf("i%d", i),
			Store:    hs,

			FederationRedis: rdb,
			AdminToken:      "tok",
		}
		if mod != nil {
			mod(o)
		}
		tr := startRelay(t, c.reg, o, nil, nil)
		c.relays = append(c.relays, tr)
		c.stores = append(c.stores, hs)
	}
	return c
}

// waitHeld waits until every instance sees, through NATS, that k is held
// by instance (the interest has spread over the routes).
func (c *testCluster) waitHeld(t *testing.T, k SessionKey, instance string) {
	t.Helper()
	for _, r := range c.relays {
		waitFor(t, 30*time.Second, func() error {
			got, err := r.cl.holder(k)
			if err != nil || got != instance {
				return fmt.Errorf("%s sees %s held by %q (%v), want %q", r.opts.Instance, k, got, err, instance)
			}
			return nil
		})
	}
}

// recvPayload waits (generously: a loaded machine) for one envelope.
func recvPayload(t *testing.T, c *client, want string) {
	t.Helper()
	e, err := c.recvWithin(30 * time.Second)
	if err != nil {
		t.Fatalf("twin %d: waiting for %q: %v", c.tw.num, want, err)
	}
	if got := string(e.GetPlain()); got != want {
		t.Fatalf("twin %d: got %q (%v), want %q", c.tw.num, got, e, want)
	}
}

// Peers spread over three instances call each other in every direction,
// each envelope crossing the NATS cluster once.
func TestClusterCallsEveryDirection(t *testing.T) {
	c := startCluster(t)
	var clients []*client
	for i := range c.relays {
		tw := c.reg.newTwin(t, clusterDomain)
		clients = append(clients, dial(t, c.relays[i], tw, ""))
	}
	for i := range clients {
		c.waitHeld(t, SessionKey{Twin: clients[i].tw.num}, c.relays[i].opts.Instance)
	}
	for i, from := range clients {
		for j, to := range clients {
			if i == j {
				continue
			}
			p := fmt.Sprintf("%d->%d", i, j)
			from.send(to.tw.num, "", p)
			recvPayload(t, to, p)
		}
	}
	// The status page and the metrics name the instance and its NATS state.
	for i, r := range c.relays {
		inst := fmt.Sprintf("i%d", i)
		st := httpGet(t, "http://"+r.domain+"/status.json")
		if !strings.Contains(st, `"instance":"`+inst+`"`) || !strings.Contains(st, `"nats":"connected"`) {
			t.Fatalf("status.json of %s: %s", inst, st)
		}
		if m := httpGet(t, "http://"+r.domain+"/metrics"); !strings.Contains(m, `rmb_relay_cluster_nats_connected{instance="`+inst+`"} 1`) {
			t.Fatalf("metrics of %s lack the NATS state", inst)
		}
	}
	// Instance 0's status page lists every instance with its sessions.
	waitFor(t, 30*time.Second, func() error {
		var st statusSnapshot
		if err := json.Unmarshal([]byte(httpGet(t, "http://"+c.relays[0].domain+"/status.json")), &st); err != nil {
			return err
		}
		want := []InstanceStatus{{"i0", 1, "connected"}, {"i1", 1, "connected"}, {"i2", 1, "connected"}}
		if fmt.Sprint(st.Cluster) != fmt.Sprint(want) {
			return fmt.Errorf("cluster on the status page: %v, want %v", st.Cluster, want)
		}
		return nil
	})
	// Counted after the hand-over: the last one may lag its delivery.
	waitFor(t, 30*time.Second, func() error {
		var cross, stored uint64
		for _, r := range c.relays {
			cross += r.counters.routed[routedCluster].Load()
			stored += r.counters.routed[routedStored].Load()
		}
		if cross != 6 || stored != 0 {
			return fmt.Errorf("routed via the cluster: %d, stored %d; want 6, 0", cross, stored)
		}
		return nil
	})
}

// An envelope for a session nobody holds goes to the shared store at once
// (NATS no-responders) and is delivered when the session connects to
// another instance; fail-fast gets "destination offline" at once.
func TestClusterStoredAndFailFast(t *testing.T) {
	c := startCluster(t)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	b := dial(t, c.relays[1], btw, "s1")
	waitSession(t, c.relays[1].Relay, SessionKey{Twin: btw.num, SID: "s1"}, true)
	b.c.Close(websocket.StatusNormalClosure, "")
	waitSession(t, c.relays[1].Relay, SessionKey{Twin: btw.num, SID: "s1"}, false)

	a.send(btw.num, "s1", "kept")
	e := request(t, a.tw, "", btw.num, "s1", "fast", 60)
	tags := envelope.TagFailFast
	e.Tags = &tags
	e.Stamp(time.Now())
	e.Sign(a.tw.id)
	a.sendRaw(marshal(t, e))
	got, err := a.recvWithin(30 * time.Second)
	if err != nil || !got.IsError() || got.GetError().GetMessage() != msgOffline || got.Uid != e.Uid {
		t.Fatalf("fail-fast: got %v, %v; want error %q", got, err, msgOffline)
	}
	b2 := dial(t, c.relays[2], btw, "s1")
	recvPayload(t, b2, "kept")
	b2.expectNothing(200 * time.Millisecond)
}

// No lost wake-up: instance 0 finds nobody holding the session and stores
// the envelope only after the session, connecting to instance 2, has
// subscribed and drained the (then empty) store. The wake-up instance 0
// publishes after storing brings it; the settle re-drain is off, so
// nothing else could.
func TestClusterNoLostWakeup(t *testing.T) {
	defer func(d time.Duration) { clusterSettle = d }(clusterSettle)
	clusterSettle = time.Hour
	c := startCluster(t)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	key := SessionKey{Twin: btw.num, SID: "w"}

	pushing := make(chan struct{})
	release := make(chan struct{})
	c.stores[0].mu.Lock()
	c.stores[0].onPush = func(k SessionKey) {
		if k == key {
			close(pushing)
			<-release
		}
	}
	c.stores[0].mu.Unlock()
	drained := make(chan struct{})
	var once sync.Once
	c.stores[2].mu.Lock()
	c.stores[2].onPop = func(k SessionKey, n int) {
		if k == key && n == 0 {
			once.Do(func() { close(drained) })
		}
	}
	c.stores[2].mu.Unlock()

	a.send(btw.num, "w", "late")
	waitChan(t, pushing, "instance 0 storing")
	b := dial(t, c.relays[2], btw, "w")
	waitChan(t, drained, "instance 2 draining the empty store")
	close(release)
	recvPayload(t, b, "late")
}

func waitChan(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// A session that connects to instance 2 while instance 1 holds it takes
// it over: the old connection is closed (4000), and of the envelopes sent
// to the session meanwhile none is lost and none delivered twice.
func TestClusterSessionReplacedAcrossInstances(t *testing.T) {
	c := startCluster(t)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	key := SessionKey{Twin: btw.num, SID: "r"}
	old := dial(t, c.relays[1], btw, "r")
	c.waitHeld(t, key, "i1")

	const n = 200
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range n {
			a.send(btw.num, "r", fmt.Sprint("m", i))
		}
	}()
	// Take over in the middle of the stream.
	waitFor(t, 30*time.Second, func() error {
		if got := c.relays[0].counters.routed[routedCluster].Load(); got < n/4 {
			return fmt.Errorf("%d routed", got)
		}
		return nil
	})
	nw := dial(t, c.relays[2], btw, "r")
	<-sent

	seen := map[string]int{}
	var closeCode websocket.StatusCode = -1
	for {
		var r received
		select {
		case r = <-old.in:
		case <-time.After(30 * time.Second):
			t.Fatal("old connection not closed")
		}
		if r.err != nil {
			closeCode = websocket.CloseStatus(r.err)
			break
		}
		e, err := envelope.Unmarshal(r.b, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen[string(e.GetPlain())]++
	}
	if closeCode != statusReplaced {
		t.Fatalf("old connection closed with %d, want %d", closeCode, statusReplaced)
	}
	for len(seen) < n {
		e, err := nw.recvWithin(30 * time.Second)
		if err != nil {
			t.Fatalf("%d of %d envelopes delivered: %v", len(seen), n, err)
		}
		seen[string(e.GetPlain())]++
	}
	nw.expectNothing(300 * time.Millisecond)
	var dup []string
	for p, k := range seen {
		if k > 1 || !strings.HasPrefix(p, "m") {
			dup = append(dup, p)
		}
	}
	if len(dup) > 0 {
		t.Fatalf("delivered twice (or unexpected): %v", dup)
	}
	if c.relays[2].cl.counts[clusterTakeovers].Load() != 1 {
		t.Fatal("no takeover counted")
	}
}

// Cluster mode refuses a store that is not shared.
func TestClusterNeedsSharedStore(t *testing.T) {
	_, err := New(&Options{Domains: []string{clusterDomain}, Directory: startRegistrar(t).client, NATS: []string{"nats://127.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "RedisStore") {
		t.Fatalf("got %v, want an error asking for a shared store", err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A federation POST may arrive at any instance: each delivers through the
// cluster to the instance holding the session, and the replay guard is
// shared, so a request posted six times round the instances is delivered
// 1 + maxRedeliveries times, as by a single relay, and the sixth copy is a
// replay.
func TestClusterFederationReplayGuardShared(t *testing.T) {
	c := startCluster(t)
	src := c.reg.newTwin(t, "other.example")
	btw := c.reg.newTwin(t, clusterDomain)
	b := dial(t, c.relays[1], btw, "")
	c.waitHeld(t, SessionKey{Twin: btw.num}, "i1")
	body := marshal(t, request(t, src, "", btw.num, "", "fed", 60))
	for i := range maxRedeliveries + 2 {
		r := c.relays[i%3]
		resp, err := http.Post("http://"+r.domain+"/", "application/x-protobuf", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST %d to %s: %d", i, r.opts.Instance, resp.StatusCode)
		}
	}
	for i := range maxRedeliveries + 1 {
		if _, err := b.recvWithin(30 * time.Second); err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
	}
	b.expectNothing(300 * time.Millisecond)
	var replays uint64
	for _, r := range c.relays {
		replays += dropped(r.Relay, dropReplay)
	}
	if replays != 1 {
		t.Fatalf("%d replays counted, want 1", replays)
	}
}

// The shared replay guard in Redis forgets an entry at its deadline,
// holds at most its bound (the entries closest to their deadline go
// first) and allows maxRedeliveries of an envelope (here an answer).
func TestSharedReplayGuardBounded(t *testing.T) {
	rs := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	g := newSharedReplay(rdb, clusterDomain, 3)
	now := time.Now()
	key := func(uid string) replayKey {
		rt := envelope.Routing{UID: []byte(uid), Kind: envelope.KindResponse}
		return replayKeyOf(&rt)
	}
	// seen: recorded and not past its deadline at at (replayed itself
	// would count a redelivery).
	seen := func(k replayKey, at time.Time) bool {
		t.Helper()
		score, err := rdb.ZScore(context.Background(), g.keys[0], hex.EncodeToString(k[:])).Result()
		if errors.Is(err, redis.Nil) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return int64(score) >= at.Unix()
	}
	for i, uid := range []string{"a", "b", "c", "d"} {
		if err := g.add(key(uid), now.Add(time.Duration(10*(i+1))*time.Second), now); err != nil {
			t.Fatal(err)
		}
	}
	if seen(key("a"), now) || !seen(key("b"), now) || !seen(key("d"), now) {
		t.Fatal("over the bound, the earliest deadline should go first")
	}
	if n, _ := rdb.ZCard(context.Background(), g.keys[0]).Result(); n != 3 {
		t.Fatalf("%d entries, bound 3", n)
	}
	if seen(key("b"), now.Add(25*time.Second)) {
		t.Fatal("seen after its deadline")
	}
	rq := key("req")
	if err := g.add(rq, now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	for i := range maxRedeliveries {
		if rep, err := g.replayed(rq, now); err != nil || rep {
			t.Fatalf("redelivery %d refused (%v)", i+1, err)
		}
	}
	if rep, _ := g.replayed(rq, now); !rep {
		t.Fatal("redelivery beyond the bound allowed")
	}
	if ttl, _ := rdb.PTTL(context.Background(), g.keys[0]).Result(); ttl <= 0 || ttl > replayKeyTTL {
		t.Fatalf("key TTL %v", ttl)
	}
}

// A session id made of NATS subject syntax ('.', '*', '>') names one
// session only: it is hex in the subject, so it neither matches nor
// reaches the subjects of other sessions.
func TestClusterSubjectSafe(t *testing.T) {
	c := startCluster(t)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	wild := dial(t, c.relays[1], btw, "*.>")
	plain := dial(t, c.relays[2], btw, "x")
	c.waitHeld(t, SessionKey{Twin: btw.num, SID: "*.>"}, "i1")
	c.waitHeld(t, SessionKey{Twin: btw.num, SID: "x"}, "i2")
	a.send(btw.num, "x", "to x")
	recvPayload(t, plain, "to x")
	a.send(btw.num, "*.>", "to wild")
	recvPayload(t, wild, "to wild")
	wild.expectNothing(200 * time.Millisecond)
	plain.expectNothing(0)
	cl := c.relays[0].cl
	for _, sid := range []string{"", "x", "*.>", "a b\x00", strings.Repeat("é", 40)} {
		k := SessionKey{Twin: 7, SID: sid}
		subj := cl.subject(k)
		if strings.ContainsAny(subj[len(cl.prefix):], "*> ") {
			t.Errorf("subject %q of sid %q has wildcards", subj, sid)
		}
		if got, ok := cl.parseSubject(subj); !ok || got != k {
			t.Errorf("parse(%q) = %v %v, want %v", subj, got, ok, k)
		}
	}
	if _, ok := cl.parseSubject(cl.prefix + "7.zz"); ok {
		t.Error("a subject with a non-hex sid parsed")
	}
}

func natsURLs(nc *natstest.Cluster, n *natstest.Node, all bool) []string {
	if all {
		return nc.URLs()
	}
	return []string{n.URL}
}

// Kill -9 the NATS node the sender's instance is connected to, under a
// steady stream of envelopes with unique payloads: the instance fails over
// to another node, and every envelope is delivered (at least once: a
// request whose answer died with the node is stored as well).
func TestClusterNATSNodeKilled(t *testing.T) {
	nc := natstest.StartCluster(t, 3)
	c := startClusterOn(t, nc, true)
	a := dial(t, c.relays[0], c.reg.newTwin(t, clusterDomain), "")
	btw := c.reg.newTwin(t, clusterDomain)
	b := dial(t, c.relays[1], btw, "")
	c.waitHeld(t, SessionKey{Twin: btw.num}, "i1")
	var victim *natstest.Node
	url := c.relays[0].cl.nc.ConnectedUrl()
	for _, n := range nc.Nodes {
		if n.URL == url {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("instance 0 connected to %q, not a node", url)
	}
	const n = 300
	go func() {
		for i := range n {
			if i == n/3 {
				victim.Kill()
			}
			a.send(btw.num, "", fmt.Sprint("m", i))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	seen := map[string]int{}
	dups := 0
	for len(seen) < n {
		e, err := b.recvWithin(60 * time.Second)
		if err != nil {
			t.Fatalf("%d of %d delivered: %v", len(seen), n, err)
		}
		p := string(e.GetPlain())
		if seen[p]++; seen[p] > 1 {
			dups++
		}
	}
	waitFor(t, 30*time.Second, func() error {
		if s := c.relays[0].cl.state(); s != "connected" {
			return fmt.Errorf("instance 0: NATS %s", s)
		}
		return nil
	})
	t.Logf("%d delivered, %d twice; cluster events of instance 0: timeout=%d no_responders=%d",
		len(seen), dups, c.relays[0].cl.counts[clusterTimeout].Load(), c.relays[0].cl.counts[clusterNobody].Load())
}

// The admin API of any instance lists the sessions of every instance and
// disconnects a twin wherever its sessions are.
func TestClusterAdmin(t *testing.T) {
	c := startCluster(t)
	btw := c.reg.newTwin(t, clusterDomain)
	b1 := dial(t, c.relays[1], btw, "one")
	b2 := dial(t, c.relays[2], btw, "two")
	c.waitHeld(t, SessionKey{Twin: btw.num, SID: "one"}, "i1")
	c.waitHeld(t, SessionKey{Twin: btw.num, SID: "two"}, "i2")
	admin := func(method string, path string, v any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+c.relays[0].domain+path, nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var list []SessionInfo
	admin("GET", "/api/sessions", &list)
	got := map[string]string{}
	for _, s := range list {
		got[s.SID] = s.Instance
	}
	if len(list) != 2 || got["one"] != "i1" || got["two"] != "i2" {
		t.Fatalf("sessions listed by instance 0: %+v", list)
	}
	var closed struct {
		Closed int `json:"closed"`
	}
	admin("DELETE", fmt.Sprintf("/api/sessions/%d", btw.num), &closed)
	if closed.Closed != 2 {
		t.Fatalf("closed %d, want 2", closed.Closed)
	}
	for _, cl := range []*client{b1, b2} {
		for {
			e, err := cl.recvWithin(30 * time.Second)
			if err != nil {
				if websocket.CloseStatus(err) != statusRevoked {
					t.Fatalf("session not closed as revoked: %v", err)
				}
				break
			}
			t.Logf("got %v before the close", e)
		}
	}
}

// The durable federation jobs of an instance that is gone (not on NATS)
// are adopted by another instance and posted; those of a live instance
// are left alone.
func TestClusterAdoptsFederationJobs(t *testing.T) {
	c := startCluster(t)
	posted := make(chan string, 4)
	recorder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if e, err := envelope.Unmarshal(b, 0); err == nil {
			posted <- string(e.GetPlain())
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer recorder.Close()
	foreign := strings.TrimPrefix(recorder.URL, "http://")
	src := c.reg.newTwin(t, clusterDomain)
	dst := c.reg.newTwin(t, foreign)
	job := func(payload string) *fedJob {
		b := marshal(t, request(t, src, "", dst.num, "", payload, 60))
		var rt envelope.Routing
		if err := envelope.ReadRouting(b, &rt); err != nil {
			t.Fatal(err)
		}
		return newFedJob(&rt, Message{Data: b, Deadline: deadline(&rt)}, []string{foreign})
	}
	ctx := context.Background()
	ghost := newFedStore(c.rdb, clusterDomain+"/ghost")
	live := newFedStore(c.rdb, clusterDomain+"/i2")
	if err := ghost.push(ctx, job("orphan"), 100, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := live.push(ctx, job("not yours"), 100, 1<<20); err != nil {
		t.Fatal(err)
	}
	c.relays[0].adoptOrphans()
	select {
	case p := <-posted:
		if p != "orphan" {
			t.Fatalf("posted %q", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the gone instance's job was not posted")
	}
	if n, _ := c.rdb.Exists(ctx, ghost.keys...).Result(); n != 0 {
		t.Errorf("%d keys of the gone instance left", n)
	}
	if n, _ := c.rdb.HLen(ctx, live.keys[0]).Result(); n != 1 {
		t.Errorf("the live instance's hash holds %d jobs, want its 1", n)
	}
	waitFor(t, 30*time.Second, func() error {
		if n, _ := c.rdb.HLen(ctx, c.relays[0].fed.durable.keys[0]).Result(); n != 0 {
			return fmt.Errorf("%d jobs left in the adopter's hash", n)
		}
		return nil
	})
	select {
	case p := <-posted:
		t.Fatalf("posted %q as well", p)
	case <-time.After(200 * time.Millisecond):
	}
}
