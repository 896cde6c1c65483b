package registrar

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

func TestClientRegisterLookupUpdate(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	ctx := context.Background()
	c := NewClient(hs.URL+"/", nil)
	for i, kt := range keyTypes {
		t.Run(string(kt), func(t *testing.T) {
			id := vectorIdentity(t, kt)
			twin, err := c.Register(ctx, id, []string{"r1.example"})
			if err != nil {
				t.Fatal(err)
			}
			if twin.ID != uint32(i+1) || !slices.Equal(twin.PublicKey, id.PublicKey()) || !slices.Equal(twin.E2EKey, id.E2EPublicKey()) || !slices.Equal(twin.Relays, []string{"r1.example"}) {
				t.Errorf("registered %+v", twin)
			}

			_, err = c.Register(ctx, id, nil)
			var se *StatusError
			if !errors.Is(err, ErrExists) || !errors.As(err, &se) || se.StatusCode != http.StatusConflict || !strings.Contains(se.Message, "already registered") {
				t.Errorf("registering twice: %v", err)
			}

			got, err := c.Twin(ctx, twin.ID)
			if err != nil || got.ID != twin.ID || !slices.Equal(got.PublicKey, id.PublicKey()) {
				t.Errorf("Twin = %+v, %v", got, err)
			}
			got, err = c.TwinByPublicKey(ctx, id.PublicKey())
			if err != nil || got.ID != twin.ID {
				t.Errorf("TwinByPublicKey = %+v, %v", got, err)
			}
			if _, err := c.TwinByPublicKey(ctx, make([]byte, 32)); !errors.Is(err, ErrNotFound) {
				t.Errorf("TwinByPublicKey(unknown) = %v, want ErrNotFound", err)
			}

			// Relays change, the e2e key stays; the cache follows.
			up, err := c.Update(ctx, id, twin.ID, []string{"r2.example"}, nil)
			if err != nil || !slices.Equal(up.Relays, []string{"r2.example"}) || !slices.Equal(up.E2EKey, id.E2EPublicKey()) {
				t.Fatalf("Update = %+v, %v", up, err)
			}
			if got, _ := c.Twin(ctx, twin.ID); !slices.Equal(got.Relays, []string{"r2.example"}) {
				t.Errorf("Twin after Update: relays %q", got.Relays)
			}
			e2e := newIdentity(t, kt).E2EPublicKey()
			if up, err = c.Update(ctx, id, twin.ID, nil, e2e); err != nil || !slices.Equal(up.E2EKey, e2e) || !slices.Equal(up.Relays, []string{"r2.example"}) {
				t.Errorf("Update e2e = %+v, %v", up, err)
			}

			// Only the owner may update.
			_, err = c.Update(ctx, newIdentity(t, kt), twin.ID, []string{"evil.example"}, nil)
			if !errors.As(err, &se) || se.StatusCode != http.StatusUnauthorized || !strings.Contains(err.Error(), "X-Auth") {
				t.Errorf("update by a stranger: %v", err)
			}
		})
	}
}

func TestClientCache(t *testing.T) {
	hits := &counter{path: "/v1/accounts"}
	hs, _ := startServer(t, nil, hits.wrap)
	ctx := context.Background()
	id := vectorIdentity(t, identity.Ed25519)
	twin := register(t, hs.URL, id, "r1.example").TwinID
	hits.n.Store(0)

	c := NewClient(hs.URL, nil)
	if got, err := c.CachedTwin(twin); got != nil || !errors.Is(err, ErrNotCached) {
		t.Errorf("CachedTwin before any lookup = %v, %v; want ErrNotCached", got, err)
	}
	first, err := c.Twin(ctx, twin)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Twin(ctx, twin)
	if err != nil || second != first {
		t.Errorf("second lookup = %p, %v; want the cached %p", second, err, first)
	}
	if got, err := c.CachedTwin(twin); err != nil || got != first {
		t.Errorf("CachedTwin = %p, %v; want the cached %p", got, err, first)
	}
	if n := hits.n.Load(); n != 1 {
		t.Errorf("%d requests for two lookups and CachedTwin, want 1", n)
	}

	c.Invalidate(twin)
	if _, err := c.CachedTwin(twin); !errors.Is(err, ErrNotCached) {
		t.Errorf("CachedTwin after Invalidate: %v, want ErrNotCached", err)
	}
	if _, err := c.Twin(ctx, twin); err != nil {
		t.Fatal(err)
	}
	if n := hits.n.Load(); n != 2 {
		t.Errorf("%d requests after Invalidate, want 2", n)
	}

	// Entries expire after CacheTTL.
	short := NewClient(hs.URL, &ClientOptions{CacheTTL: 50 * time.Millisecond})
	if _, err := short.Twin(ctx, twin); err != nil {
		t.Fatal(err)
	}
	if _, err := short.Twin(ctx, twin); err != nil {
		t.Fatal(err)
	}
	if n := hits.n.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
	eventually(t, 5*time.Second, "the cache entry to expire", func() bool {
		if _, err := short.Twin(ctx, twin); err != nil {
			t.Fatal(err)
		}
		return hits.n.Load() == 4
	})
}

func TestClientNegativeCache(t *testing.T) {
	hits := &counter{path: "/v1/accounts"}
	hs, _ := startServer(t, nil, hits.wrap)
	ctx := context.Background()
	c := NewClient(hs.URL, &ClientOptions{NegativeCacheTTL: 300 * time.Millisecond})

	for i := range 3 {
		_, err := c.Twin(ctx, 1)
		var se *StatusError
		if !errors.Is(err, ErrNotFound) || !errors.As(err, &se) || se.StatusCode != http.StatusNotFound || !strings.Contains(err.Error(), "twin 1") {
			t.Fatalf("lookup %d of a missing twin: %v", i, err)
		}
	}
	if n := hits.n.Load(); n != 1 {
		t.Errorf("%d requests for three lookups of a missing twin, want 1", n)
	}
	if _, err := c.CachedTwin(1); !errors.Is(err, ErrNotFound) {
		t.Errorf("CachedTwin of a missing twin: %v, want the cached ErrNotFound", err)
	}

	// The twin appears; the negative entry hides it until it expires.
	register(t, hs.URL, vectorIdentity(t, identity.Sr25519))
	if _, err := c.Twin(ctx, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("right after registration: %v, want the cached ErrNotFound", err)
	}
	eventually(t, 5*time.Second, "the negative entry to expire", func() bool {
		twin, err := c.Twin(ctx, 1)
		return err == nil && twin.ID == 1
	})

	// Other errors are not cached.
	broken := NewClient(hs.URL+"/broken", nil)
	for range 2 {
		if _, err := broken.Twin(ctx, 1); err == nil {
			t.Fatal("lookup through a wrong base URL succeeded")
		}
	}
}

// TestClientCoalescing holds the first lookup at the server while more
// callers ask for the same twin; they must all share that one request.
func TestClientCoalescing(t *testing.T) {
	for _, tt := range []struct {
		name  string
		twin  uint32
		found bool
	}{{"existing twin", 1, true}, {"missing twin", 2, false}} {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int64
			gate := make(chan struct{})
			openGate := sync.OnceFunc(func() { close(gate) })
			defer openGate()
			hs, _ := startServer(t, nil, func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && r.URL.Path == "/v1/accounts" {
						hits.Add(1)
						<-gate
					}
					h.ServeHTTP(w, r)
				})
			})
			register(t, hs.URL, vectorIdentity(t, identity.Ed25519), "r1.example")
			c := NewClient(hs.URL, nil)

			const n = 32
			var started, finished sync.WaitGroup
			results := make([]*Twin, n)
			errs := make([]error, n)
			for i := range n {
				started.Add(1)
				finished.Add(1)
				go func() {
					defer finished.Done()
					started.Done()
					results[i], errs[i] = c.Twin(context.Background(), tt.twin)
				}()
			}
			started.Wait()
			eventually(t, 5*time.Second, "the first lookup to reach the server", func() bool { return hits.Load() >= 1 })
			// Give the other callers time to miss the cache too; without
			// coalescing each would now be at the server.
			time.Sleep(200 * time.Millisecond)
			if got := hits.Load(); got != 1 {
				t.Errorf("%d concurrent misses sent %d requests, want 1", n, got)
			}
			openGate()
			finished.Wait()
			for i := range n {
				switch {
				case tt.found && (errs[i] != nil || results[i] != results[0] || results[i].ID != tt.twin):
					t.Errorf("caller %d got %+v, %v", i, results[i], errs[i])
				case !tt.found && !errors.Is(errs[i], ErrNotFound):
					t.Errorf("caller %d got %+v, %v; want ErrNotFound", i, results[i], errs[i])
				}
			}
			if got := hits.Load(); got != 1 {
				t.Errorf("%d requests in all, want 1", got)
			}
		})
	}
}

// TestClientCallerCancel checks that a caller giving up does not fail the
// others waiting for the same lookup.
func TestClientCallerCancel(t *testing.T) {
	gate := make(chan struct{})
	openGate := sync.OnceFunc(func() { close(gate) })
	hs, _ := startServer(t, nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet {
				<-gate
			}
			h.ServeHTTP(w, r)
		})
	})
	defer openGate()
	register(t, hs.URL, vectorIdentity(t, identity.Ed25519))
	c := NewClient(hs.URL, nil)

	ctx, cancel := context.WithCancel(context.Background())
	impatient := make(chan error, 1)
	go func() {
		_, err := c.Twin(ctx, 1)
		impatient <- err
	}()
	patient := make(chan error, 1)
	go func() {
		_, err := c.Twin(context.Background(), 1)
		patient <- err
	}()
	cancel()
	if err := <-impatient; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v", err)
	}
	openGate()
	if err := <-patient; err != nil {
		t.Errorf("patient caller: %v", err)
	}
}

// TestClientInvalidateDuringFetch invalidates a twin while a lookup that
// read the old state is still on its way back: that answer must not be
// cached.
func TestClientInvalidateDuringFetch(t *testing.T) {
	var gated atomic.Bool
	answered := make(chan struct{})
	gate := make(chan struct{})
	openGate := sync.OnceFunc(func() { close(gate) })
	defer openGate()
	hs, _ := startServer(t, nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !gated.CompareAndSwap(true, false) {
				h.ServeHTTP(w, r)
				return
			}
			// Read the state now, deliver it later.
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			close(answered)
			<-gate
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
		})
	})
	ctx := context.Background()
	owner := vectorIdentity(t, identity.Ed25519)
	twin := register(t, hs.URL, owner, "r1.example").TwinID
	c := NewClient(hs.URL, &ClientOptions{CacheTTL: time.Hour})

	gated.Store(true)
	fetched := make(chan *Twin, 1)
	go func() {
		got, err := c.Twin(ctx, twin)
		if err != nil {
			t.Error(err)
		}
		fetched <- got
	}()
	<-answered
	if _, err := NewClient(hs.URL, nil).Update(ctx, owner, twin, []string{"r2.example"}, nil); err != nil {
		t.Fatal(err)
	}
	c.Invalidate(twin) // what Watch does on the change
	openGate()
	if old := <-fetched; old == nil || old.Relays[0] != "r1.example" {
		t.Fatalf("the gated lookup got %+v, want the old state", old)
	}
	if got, err := c.Twin(ctx, twin); err != nil || got.Relays[0] != "r2.example" {
		t.Errorf("after the invalidation: %+v, %v; the stale answer was cached", got, err)
	}
}

func TestClientWatch(t *testing.T) {
	polls := &counter{path: "/v1/accounts/changes"}
	hs, _ := startServer(t, nil, polls.wrap)
	ctx := context.Background()
	owner := vectorIdentity(t, identity.Sr25519)
	twin := register(t, hs.URL, owner, "r1.example").TwinID
	other := NewClient(hs.URL, nil)

	// The cache would hold everything for an hour; only Watch can refresh it.
	c := NewClient(hs.URL, &ClientOptions{CacheTTL: time.Hour, NegativeCacheTTL: time.Hour})
	if _, err := c.Twin(ctx, twin); err != nil {
		t.Fatal(err)
	}
	// A change before Watch starts is not in the feed Watch follows, so
	// Watch drops what was cached before it started.
	if _, err := other.Update(ctx, owner, twin, []string{"r2.example"}, nil); err != nil {
		t.Fatal(err)
	}
	startWatch(t, c)
	eventually(t, 5*time.Second, "Watch to start", func() bool { return polls.n.Load() >= 2 })
	if got, err := c.Twin(ctx, twin); err != nil || !slices.Equal(got.Relays, []string{"r2.example"}) {
		t.Fatalf("after Watch started: %+v, %v", got, err)
	}
	if _, err := c.Twin(ctx, 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("twin 2: %v", err)
	}

	start := time.Now()
	if _, err := other.Update(ctx, owner, twin, []string{"r3.example"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the update to reach the cache", func() bool {
		got, err := c.Twin(ctx, twin)
		return err == nil && slices.Equal(got.Relays, []string{"r3.example"})
	})
	t.Logf("update visible after %s", time.Since(start))

	if _, err := other.Register(ctx, newIdentity(t, identity.Ed25519), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the new twin to replace the negative entry", func() bool {
		got, err := c.Twin(ctx, 2)
		return err == nil && got.ID == 2
	})
}

// TestClientWatchRetries breaks the change feed for a while; Watch must
// back off, retry and then keep the cache fresh.
func TestClientWatchRetries(t *testing.T) {
	var failures atomic.Int64
	hs, _ := startServer(t, nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/accounts/changes" && failures.Add(1) <= 3 {
				http.Error(w, "try later", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	owner := vectorIdentity(t, identity.Ed25519)
	twin := register(t, hs.URL, owner, "r1.example").TwinID
	c := NewClient(hs.URL, &ClientOptions{CacheTTL: time.Hour})
	startWatch(t, c)

	eventually(t, 5*time.Second, "Watch to get past the failures", func() bool { return failures.Load() > 4 })
	if _, err := c.Twin(ctx, twin); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(hs.URL, nil).Update(ctx, owner, twin, []string{"r2.example"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the update to reach the cache", func() bool {
		got, err := c.Twin(ctx, twin)
		return err == nil && slices.Equal(got.Relays, []string{"r2.example"})
	})
}

// TestClientWatchReset points a watching client at a registrar whose
// sequence is behind the one it followed (a restored database): the whole
// cache must go.
func TestClientWatchReset(t *testing.T) {
	ctx := context.Background()
	oldSrv, newSrv := NewServer(nil), NewServer(nil)
	var current atomic.Pointer[Server]
	current.Store(oldSrv)
	polls := &counter{path: "/v1/accounts/changes"}
	hs := httptest.NewServer(polls.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		current.Load().Handler().ServeHTTP(w, r)
	})))
	t.Cleanup(func() {
		oldSrv.Close()
		newSrv.Close()
		hs.Close()
	})

	for range 3 {
		register(t, hs.URL, newIdentity(t, identity.Ed25519), "old.example")
	}
	c := NewClient(hs.URL, &ClientOptions{CacheTTL: time.Hour})
	startWatch(t, c)
	eventually(t, 5*time.Second, "Watch to start", func() bool { return polls.n.Load() >= 2 })
	if got, err := c.Twin(ctx, 1); err != nil || got.Relays[0] != "old.example" {
		t.Fatalf("Twin(1) = %+v, %v", got, err)
	}

	current.Store(newSrv)
	register(t, hs.URL, newIdentity(t, identity.Ed25519), "new.example")
	oldSrv.Close() // answers the poll still waiting on the old registrar
	eventually(t, 5*time.Second, "the cache to be dropped", func() bool {
		got, err := c.Twin(ctx, 1)
		return err == nil && got.Relays[0] == "new.example"
	})
}

// startWatch runs c.Watch until the test ends, then checks that it
// returned because its context was cancelled.
func startWatch(t *testing.T, c *Client) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	defer plain.Close()
	_, err := NewClient(plain.URL, nil).Twin(ctx, 1)
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusBadGateway || se.Message != "upstream down" {
		t.Errorf("non-JSON error answer: %v", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Errorf("502 reads as ErrNotFound: %v", err)
	}

	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"twin_id": 1, "public_key": "AAAA"}`))
	}))
	defer garbage.Close()
	if _, err := NewClient(garbage.URL, nil).Twin(ctx, 1); err == nil || !strings.Contains(err.Error(), "public_key") {
		t.Errorf("invalid account answer: %v", err)
	}

	down := httptest.NewServer(http.NotFoundHandler())
	url := down.URL
	down.Close()
	_, err = NewClient(url, nil).Twin(ctx, 7)
	if err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), "look up twin 7") || !strings.Contains(err.Error(), url) {
		t.Errorf("connection error: %v", err)
	}
	_, err = NewClient(url, nil).Register(ctx, vectorIdentity(t, identity.Ed25519), nil)
	if err == nil || !strings.Contains(err.Error(), "register") {
		t.Errorf("connection error on Register: %v", err)
	}
}

func TestClientCacheBound(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	for range 5 {
		register(t, hs.URL, newIdentity(t, identity.Ed25519))
	}
	c := NewClient(hs.URL, &ClientOptions{MaxCacheEntries: 3})
	for id := uint32(1); id <= 5; id++ {
		if _, err := c.Twin(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		n := len(c.cache)
		c.mu.Unlock()
		if n > 3 {
			t.Fatalf("cache holds %d entries, bound is 3", n)
		}
	}
}

func TestClientTwinCachedAllocs(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	register(t, hs.URL, vectorIdentity(t, identity.Ed25519))
	c := NewClient(hs.URL, nil)
	ctx := context.Background()
	if _, err := c.Twin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.Twin(ctx, 1); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("cached Twin allocates %.1f times per call, want 0", allocs)
	}
}

func BenchmarkClientTwinCached(b *testing.B) {
	hs, _ := startServer(b, nil, nil)
	register(b, hs.URL, vectorIdentity(b, identity.Ed25519))
	c := NewClient(hs.URL, nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Twin(ctx, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
