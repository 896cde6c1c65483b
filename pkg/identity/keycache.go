package identity

import (
	"sync"

	"github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/oasisprotocol/curve25519-voi/primitives/sr25519"
)

// A peer verifies every envelope against the key of its sender, and most
// traffic comes from few senders. Decoding a public key (a point
// decompression) and, for ed25519, expanding it into a table of
// multiples costs about a fifth of a verification; keyCache keeps the
// results for the keys seen recently.

// maxCachedKeys bounds each map of keyCache. An expanded ed25519 key is
// about 1.5 KiB.
const maxCachedKeys = 1024

type keyCache struct {
	mu sync.RWMutex
	ed map[[PublicKeySize]byte]*ed25519.ExpandedPublicKey
	sr map[[PublicKeySize]byte]*sr25519.PublicKey
}

var verifyKeys = &keyCache{
	ed: make(map[[PublicKeySize]byte]*ed25519.ExpandedPublicKey),
	sr: make(map[[PublicKeySize]byte]*sr25519.PublicKey),
}

// ed25519 returns the expanded form of public (32 bytes).
func (c *keyCache) ed25519(public []byte) (*ed25519.ExpandedPublicKey, error) {
	return cached(&c.mu, c.ed, public, ed25519.NewExpandedPublicKey)
}

// sr25519 returns the decoded form of public (32 bytes).
func (c *keyCache) sr25519(public []byte) (*sr25519.PublicKey, error) {
	return cached(&c.mu, c.sr, public, sr25519.NewPublicKeyFromBytes)
}

// cached returns m's entry for public, or decodes public and adds it.
func cached[V any, B ~[]byte](mu *sync.RWMutex, m map[[PublicKeySize]byte]*V, public []byte, decode func(B) (*V, error)) (*V, error) {
	k := [PublicKeySize]byte(public)
	mu.RLock()
	v := m[k]
	mu.RUnlock()
	if v != nil {
		return v, nil
	}
	v, err := decode(B(public))
	if err != nil {
		return nil, err
	}
	mu.Lock()
	evict(m)
	m[k] = v
	mu.Unlock()
	return v, nil
}

// evict makes room for one entry in a full map by dropping an arbitrary
// one (Go's map iteration starts at a random place). The caller holds the
// write lock.
func evict[V any](m map[[PublicKeySize]byte]V) {
	if len(m) < maxCachedKeys {
		return
	}
	for k := range m {
		delete(m, k)
		return
	}
}
