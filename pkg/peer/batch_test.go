package peer

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// noRegistrar is never called: these tests use the Redis side only.
type noRegistrar struct{}

func (noRegistrar) Twin(context.Context, uint32) (*registrar.Twin, error) {
	return nil, errors.New("no registrar")
}
func (noRegistrar) TwinByPublicKey(context.Context, []byte) (*registrar.Twin, error) {
	return nil, errors.New("no registrar")
}
func (noRegistrar) Register(context.Context, *identity.Identity, []string) (*registrar.Twin, error) {
	return nil, errors.New("no registrar")
}
func (noRegistrar) Update(context.Context, *identity.Identity, uint32, []string, []byte) (*registrar.Twin, error) {
	return nil, errors.New("no registrar")
}

// redisPeer is a peer that is not running, with its batchers started on
// a private redis-server.
func redisPeer(t *testing.T, limit int64) (*Peer, *redis.Client) {
	t.Helper()
	p, rdb, _ := redisPeerOn(t, limit, nil)
	return p, rdb
}

func redisPeerOn(t *testing.T, limit int64, opts *redistest.Options) (*Peer, *redis.Client, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t, opts)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	seed := make([]byte, 32)
	rand.Read(seed)
	id, err := identity.FromSeed(seed, identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(&Options{Identity: id, Relays: []string{"ws://127.0.0.1:1"}, Registrar: noRegistrar{},
		Redis: rdb, QueueLimit: limit, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.startBatchers())
	return p, rdb, srv
}

// Many concurrent pushes share round trips and still respect the bound
// exactly, per list.
func TestPushBoundExactUnderConcurrency(t *testing.T) {
	const limit, pushers = 50, 400
	p, rdb := redisPeer(t, limit)
	ctx := context.Background()
	rt := &redistest.RoundTrips{}
	rdb.AddHook(rt)
	var (
		wg            sync.WaitGroup
		mu            sync.Mutex
		ok, full, bad = map[string]int{}, map[string]int{}, 0
	)
	start := make(chan struct{})
	for i := range pushers {
		queue := "q" + strconv.Itoa(i%2)
		wg.Go(func() {
			<-start
			err := p.pushBounded(ctx, queue, []byte(strconv.Itoa(i)), time.Now().Add(5*time.Second))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok[queue]++
			case errors.Is(err, errQueueFull):
				full[queue]++
			default:
				bad++
				t.Errorf("push: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	for _, q := range []string{"q0", "q1"} {
		n, err := rdb.LLen(ctx, q).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ok[q] != limit || full[q] != pushers/2-limit || n != limit {
			t.Errorf("%s: %d pushed, %d refused, %d in the list; want %d, %d, %d", q, ok[q], full[q], n, limit, pushers/2-limit, limit)
		}
	}
	// Coalesced: fewer round trips than pushes, counting the ones that
	// took pushes back.
	if n := rt.N(); n >= pushers {
		t.Errorf("%d round trips for %d pushes: not batched", n, pushers)
	} else {
		t.Logf("%d pushes in %d round trips", pushers, n)
	}
}

// A push whose context ended is not sent.
func TestPushCancelled(t *testing.T) {
	p, rdb := redisPeer(t, 10)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.push(cctx, "q", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled push: %v", err)
	}
	if n := rdb.LLen(context.Background(), "q").Val(); n != 0 {
		t.Fatalf("cancelled push was sent: %d in the list", n)
	}
}

// Every op of concurrent callers runs exactly once, in batches, and no
// caller returns before its op ran.
func TestCombiner(t *testing.T) {
	var (
		c       combiner[*int]
		mu      sync.Mutex
		batches int
	)
	run := func(ops []*int) {
		mu.Lock()
		batches++
		mu.Unlock()
		time.Sleep(time.Millisecond)
		for _, op := range ops {
			*op++
		}
	}
	const n = 500
	ops := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c.do(&ops[i], run)
			if ops[i] != 1 {
				t.Errorf("op %d returned after running %d times", i, ops[i])
			}
		})
	}
	wg.Wait()
	if batches >= n || c.busy || len(c.queue) != 0 {
		t.Fatalf("%d batches for %d ops; busy %v, %d queued", batches, n, c.busy, len(c.queue))
	}
}

// moveBatch takes the oldest messages first, at most n, and leaves them in
// the processing list.
func TestMoveBatch(t *testing.T) {
	p, rdb := redisPeer(t, 10)
	ctx := context.Background()
	for i := range 5 {
		rdb.LPush(ctx, "in", fmt.Sprint(i))
	}
	got, err := p.moveBatch(ctx, "in", "in.processing", 3)
	if err != nil || strings.Join(got, ",") != "0,1,2" {
		t.Fatalf("first batch %v, %v", got, err)
	}
	got, _ = p.moveBatch(ctx, "in", "in.processing", 3)
	if strings.Join(got, ",") != "3,4" {
		t.Fatalf("second batch %v", got)
	}
	if got, err = p.moveBatch(ctx, "in", "in.processing", 3); err != nil || len(got) != 0 {
		t.Fatalf("empty queue: %v, %v", got, err)
	}
	if n := rdb.LLen(ctx, "in.processing").Val(); n != 5 {
		t.Fatalf("%d in processing, want 5", n)
	}
}

// moveBatch leaves both lists as the same number of LMOVE RIGHT LEFTs
// would, whatever was in them before.
func TestMoveBatchMatchesLMove(t *testing.T) {
	p, rdb := redisPeer(t, 10)
	ctx := context.Background()
	for _, l := range []string{"a", "b"} {
		for i := range 7 {
			rdb.LPush(ctx, l+".in", fmt.Sprint(i))
		}
		rdb.LPush(ctx, l+".processing", "x", "y")
	}
	for _, n := range []int{1, 3, 64, 1} {
		got, err := p.moveBatch(ctx, "a.in", "a.processing", n)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for range n {
			v, err := rdb.LMove(ctx, "b.in", "b.processing", "RIGHT", "LEFT").Result()
			if errors.Is(err, redis.Nil) {
				break
			}
			want = append(want, v)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) && len(got)+len(want) > 0 {
			t.Fatalf("moving %d: got %q, LMOVE gives %q", n, got, want)
		}
		for _, l := range []string{".in", ".processing"} {
			a, b := rdb.LRange(ctx, "a"+l, 0, -1).Val(), rdb.LRange(ctx, "b"+l, 0, -1).Val()
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("after moving %d, %s is %q; LMOVE leaves %q", n, l, a, b)
			}
		}
	}
}

// Removals from concurrent handlers are coalesced and all happen.
func TestFinishBatched(t *testing.T) {
	p, rdb := redisPeer(t, 10)
	ctx := context.Background()
	const n = 300
	for i := range n {
		rdb.LPush(ctx, "proc", fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { p.finish("proc", fmt.Sprint(i), "") })
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for rdb.LLen(ctx, "proc").Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d left in the processing list", rdb.LLen(ctx, "proc").Val())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPendingField(t *testing.T) {
	for _, c := range []struct {
		f   string
		uid string
		dst uint32
		ok  bool
	}{
		{pendingField("0b9c6a2e-1f7d-4a53-9b1e-2d4f6a8c0e11", 42), "0b9c6a2e-1f7d-4a53-9b1e-2d4f6a8c0e11", 42, true},
		{"a/b/7", "a/b", 7, true},
		{"uid/0", "", 0, false},
		{"uid/x", "", 0, false},
		{"/5", "", 0, false},
		{"nouid", "", 0, false},
	} {
		uid, dst, ok := parsePendingField(c.f)
		if uid != c.uid || dst != c.dst || ok != c.ok {
			t.Errorf("%q: got %q %d %v", c.f, uid, dst, ok)
		}
	}
}

// A list Redis refuses fails its own push only, not the others of the
// same batch.
func TestPushErrorIsPerList(t *testing.T) {
	p, rdb := redisPeer(t, 10)
	ctx := context.Background()
	rdb.Set(ctx, "not-a-list", "x", 0)
	ops := []*pushOp{
		{ctx: ctx, queue: "good", b: []byte("1")},
		{ctx: ctx, queue: "not-a-list", b: []byte("2")},
		{ctx: ctx, queue: "good", b: []byte("3")},
	}
	var batch []*redisOp
	for _, op := range ops {
		batch = append(batch, &redisOp{push: op, done: make(chan struct{})})
	}
	if retry, next := p.runBatch(batch); len(retry)+len(next) > 0 {
		t.Fatalf("%d ops to retry", len(retry))
	}
	r0, r1, r2 := ops[0], ops[1], ops[2]
	if r0.err != nil || r0.n != 1 || r2.err != nil || r2.n != 2 {
		t.Fatalf("good pushes: %+v %+v", r0, r2)
	}
	if r1.err == nil || !strings.Contains(r1.err.Error(), "WRONGTYPE") {
		t.Fatalf("push to a string: %+v", r1)
	}
}

// popBeforeTakeBack pops the head of a list just before a pipeline that
// starts with LREM runs: a consumer that was faster than the take-back.
type popBeforeTakeBack struct {
	other  *redis.Client
	armed  atomic.Bool
	popped atomic.Int64
}

func (h *popBeforeTakeBack) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *popBeforeTakeBack) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *popBeforeTakeBack) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.armed.Load() && len(cmds) > 0 && cmds[0].Name() == "lrem" {
			if h.other.LPop(ctx, cmds[0].Args()[1].(string)).Err() == nil {
				h.popped.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// A push over the bound is taken back and reported full; but when a
// consumer popped it first it was delivered, and is reported so.
func TestPushOverBoundTakenBackUnlessPopped(t *testing.T) {
	p, rdb := redisPeer(t, 1)
	ctx := context.Background()
	// Added before the peer's Redis loop takes its connection, which
	// keeps the hooks the client had then.
	h := &popBeforeTakeBack{other: redis.NewClient(&redis.Options{Addr: rdb.Options().Addr})}
	defer h.other.Close()
	rdb.AddHook(h)
	if n, err := p.push(ctx, "q", []byte("a")); err != nil || n != 1 {
		t.Fatalf("first push: %d, %v", n, err)
	}
	if n, err := p.push(ctx, "q", []byte("b")); err != nil || n != -1 {
		t.Fatalf("push over the bound: %d, %v; want -1 (full)", n, err)
	}
	if l := rdb.LRange(ctx, "q", 0, -1).Val(); len(l) != 1 || l[0] != "a" {
		t.Fatalf("list after the take-back: %q", l)
	}
	h.armed.Store(true)
	n, err := p.push(ctx, "q", []byte("c"))
	if err != nil || n != 2 {
		t.Fatalf("push popped before its take-back: %d, %v; want 2 (delivered)", n, err)
	}
	if h.popped.Load() != 1 {
		t.Fatal("the hook did not pop")
	}
	if l := rdb.LRange(ctx, "q", 0, -1).Val(); len(l) != 1 || l[0] != "a" {
		t.Fatalf("list: %q; want only a", l)
	}
}

// After Redis forgot its scripts (a restart), moves send the script again.
func TestMoveBatchAfterScriptFlush(t *testing.T) {
	p, rdb := redisPeer(t, 100)
	ctx := context.Background()
	rdb.RPush(ctx, "in", "a", "b")
	if got, err := p.moveBatch(ctx, "in", "in.processing", 1); err != nil || len(got) != 1 {
		t.Fatalf("first move: %q, %v", got, err)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := p.moveBatch(ctx, "in", "in.processing", 1); err != nil || len(got) != 1 || got[0] != "a" {
		t.Fatalf("move after SCRIPT FLUSH: %q, %v; want [a]", got, err)
	}
}

// Bookkeeping queued while Redis is down is sent once it is back, within
// the retries.
func TestBookkeepingRetriedAcrossRedisRestart(t *testing.T) {
	p, rdb, srv := redisPeerOn(t, 100, &redistest.Options{AOF: true})
	ctx := context.Background()
	rdb.LPush(ctx, "proc", "x", "y")
	failed := &failedPipelines{}
	rdb.AddHook(failed)
	p.held["proc"] = newHolds()
	p.held["proc"].add("x")
	srv.Kill()
	p.finish("proc", "x", "")
	time.Sleep(150 * time.Millisecond) // at least one failed round trip
	srv.Restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := rdb.LRange(ctx, "proc", 0, -1).Result()
		held := p.held["proc"].count()
		if err == nil && len(l) == 1 && l[0] == "y" && held == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processing list %q (%v), %d held; want only y, none held", l, err, held)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if failed.n.Load() == 0 {
		t.Fatal("no round trip failed: the test did not exercise the retry")
	}
}

// failedPipelines counts pipelines that returned an error.
type failedPipelines struct{ n atomic.Int64 }

func (f *failedPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (f *failedPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f *failedPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err != nil {
			f.n.Add(1)
		}
		return err
	}
}

// New refuses a Redis client whose pool cannot hold the connections the
// peer keeps plus one, with a clear error, and takes one that can.
func TestNewNeedsRedisPool(t *testing.T) {
	id, err := identity.FromSeed(make([]byte, 32), identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	opts := func(pool int) *Options {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", PoolSize: pool})
		t.Cleanup(func() { rdb.Close() })
		return &Options{Identity: id, Relays: []string{"ws://127.0.0.1:1"}, Registrar: noRegistrar{}, Redis: rdb}
	}
	if _, err := New(opts(4)); err == nil || !strings.Contains(err.Error(), "PoolSize is 4") {
		t.Fatalf("PoolSize 4: %v, want an error naming it", err)
	}
	if _, err := New(opts(5)); err != nil {
		t.Fatalf("PoolSize 5: %v", err)
	}
}
