package registrar

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/rmb-go/rmb/pkg/identity"
)

// TestClientNegativeLookupsEvictNothing: lookups of made-up twin ids (what
// a relay does before it can check a token's signature) fill a cache of
// their own and leave the cached twins alone.
func TestClientNegativeLookupsEvictNothing(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	for range 3 {
		register(t, hs.URL, newIdentity(t, identity.Ed25519))
	}
	c := NewClient(hs.URL, &ClientOptions{MaxCacheEntries: 3, MaxNegativeEntries: 10})
	ctx := context.Background()
	for id := uint32(1); id <= 3; id++ {
		if _, err := c.Twin(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint32(1000); id < 1200; id++ {
		if _, err := c.Twin(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("twin %d: %v", id, err)
		}
	}
	for id := uint32(1); id <= 3; id++ {
		if _, err := c.CachedTwin(id); err != nil {
			t.Fatalf("twin %d was evicted by lookups of made-up ids: %v", id, err)
		}
	}
	c.mu.Lock()
	n := len(c.neg)
	c.mu.Unlock()
	if n > 10 {
		t.Fatalf("negative cache holds %d entries, bound is 10", n)
	}
}

// TestClientCaches4xx: a 4xx answer is cached like a 404 (and is "not
// found" to the caller); 429 and 5xx are not cached.
func TestClientCaches4xx(t *testing.T) {
	var asked atomic.Int64
	status := atomic.Int64{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(status.Load()))
		w.Write([]byte(`{"error":"no"}`))
	}))
	t.Cleanup(hs.Close)
	ctx := context.Background()
	for _, tc := range []struct {
		status   int
		cached   bool
		notFound bool
	}{
		{http.StatusBadRequest, true, true},
		{http.StatusGone, true, true},
		{http.StatusTooManyRequests, false, false},
		{http.StatusServiceUnavailable, false, false},
	} {
		status.Store(int64(tc.status))
		asked.Store(0)
		c := NewClient(hs.URL, nil)
		for range 3 {
			_, err := c.Twin(ctx, 0)
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("%d: %v, not found = %v, want %v", tc.status, err, !tc.notFound, tc.notFound)
			}
		}
		if want := map[bool]int64{true: 1, false: 3}[tc.cached]; asked.Load() != want {
			t.Errorf("%d: asked the registrar %d times for 3 lookups, want %d", tc.status, asked.Load(), want)
		}
	}
}
