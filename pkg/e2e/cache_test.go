package e2e_test

import (
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/rmb-go/rmb/pkg/e2e"
)

func peerKeys(t testing.TB, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		k, err := secp256k1.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = k.PubKey().SerializeCompressed()
	}
	return out
}

// The cache holds at most its size, drops the least recently used first and
// returns the same derived key on a hit.
func TestCacheBoundAndOrder(t *testing.T) {
	me, _ := secp256k1.GeneratePrivateKey()
	c := e2e.NewCache(me, 2)
	peers := peerKeys(t, 3)
	k0, err := c.Key(peers[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Key(peers[1]); err != nil {
		t.Fatal(err)
	}
	if again, _ := c.Key(peers[0]); again != k0 { // peers[0] is now the most recent
		t.Fatal("a hit derived a new key")
	}
	if _, err := c.Key(peers[2]); err != nil { // evicts peers[1]
		t.Fatal(err)
	}
	if c.Len() != 2 {
		t.Fatalf("len = %d, want 2", c.Len())
	}
	if c.Evicted() != 1 {
		t.Fatalf("evicted = %d, want 1", c.Evicted())
	}
	if again, _ := c.Key(peers[0]); again != k0 {
		t.Fatal("the most recently used key was evicted")
	}
	if _, err := c.Key([]byte{2, 1, 2}); err == nil {
		t.Fatal("a bad public key was accepted")
	}
	if c.Len() != 2 {
		t.Fatalf("a bad key changed the cache: len = %d", c.Len())
	}
}

// BenchmarkCacheHit is the per-envelope cost: the peer's key is cached.
func BenchmarkCacheHit(b *testing.B) {
	me, _ := secp256k1.GeneratePrivateKey()
	c := e2e.NewCache(me, 0)
	peers := peerKeys(b, 64)
	for _, p := range peers {
		c.Key(p)
	}
	i := 0
	for b.Loop() {
		if _, err := c.Key(peers[i&63]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCacheChurn misses every time on a full cache (one ECDH and one
// eviction per call), as when many new peers arrive.
func BenchmarkCacheChurn(b *testing.B) {
	me, _ := secp256k1.GeneratePrivateKey()
	c := e2e.NewCache(me, 16)
	peers := peerKeys(b, 64)
	i := 0
	for b.Loop() {
		if _, err := c.Key(peers[i&63]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCacheHitParallel: callers on all cores share one cache.
func BenchmarkCacheHitParallel(b *testing.B) {
	me, _ := secp256k1.GeneratePrivateKey()
	c := e2e.NewCache(me, 0)
	peers := peerKeys(b, 64)
	for _, p := range peers {
		c.Key(p)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Key(peers[i&63])
			i++
		}
	})
}
