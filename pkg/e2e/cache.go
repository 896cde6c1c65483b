package e2e

import (
	"fmt"
	"sync/atomic"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultCacheSize is the number of peer keys a Cache keeps by default.
const DefaultCacheSize = 4096

// Cache derives and keeps shared keys between one private key and many peer
// public keys, least recently used first out (hashicorp/golang-lru). Safe for
// concurrent use.
//
// Bounds: at most size entries; an entry is one parsed peer public key (33 or
// 65 bytes, anything else fails to parse and is not cached) and one derived
// Key (a few hundred bytes), so the bytes are bounded by the count. Evicted
// counts the entries dropped to stay within the bound.
type Cache struct {
	priv    *secp256k1.PrivateKey
	keys    *lru.Cache[peerKey, *Key]
	evicted atomic.Uint64
}

// maxPublicKey is the longest public key secp256k1 parses (uncompressed).
const maxPublicKey = 65

// peerKey is a public key as a fixed-size map key: a string key would be
// allocated on every lookup through the generic cache.
type peerKey struct {
	n uint8
	b [maxPublicKey]byte
}

// NewCache makes a cache for priv holding up to size keys (0 = default).
func NewCache(priv *secp256k1.PrivateKey, size int) *Cache {
	if size <= 0 {
		size = DefaultCacheSize
	}
	c := &Cache{priv: priv}
	keys, err := lru.NewWithEvict(size, func(peerKey, *Key) { c.evicted.Add(1) })
	if err != nil { // only for size <= 0, excluded above
		panic(err)
	}
	c.keys = keys
	return c
}

// Key returns the shared key with peerPublic, deriving it on a miss.
func (c *Cache) Key(peerPublic []byte) (*Key, error) {
	if len(peerPublic) > maxPublicKey {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadPublicKey, len(peerPublic))
	}
	id := peerKey{n: uint8(len(peerPublic))}
	copy(id.b[:], peerPublic)
	if k, ok := c.keys.Get(id); ok {
		return k, nil
	}
	// Derive outside the cache's lock: ECDH is the slow part.
	shared, err := SharedKey(c.priv, peerPublic)
	if err != nil {
		return nil, err
	}
	k, err := NewKey(shared)
	if err != nil {
		return nil, err
	}
	// Two callers may derive the same key at once: the first one cached wins,
	// so every caller uses one Key per peer.
	if prev, ok, _ := c.keys.PeekOrAdd(id, k); ok {
		return prev, nil
	}
	return k, nil
}

// Len is the number of cached keys.
func (c *Cache) Len() int { return c.keys.Len() }

// Evicted is the number of keys dropped (least recently used) to keep the
// cache within its size since it was made.
func (c *Cache) Evicted() uint64 { return c.evicted.Load() }

// Seal encrypts plaintext for peerPublic.
func (c *Cache) Seal(peerPublic, plaintext []byte) ([]byte, error) {
	k, err := c.Key(peerPublic)
	if err != nil {
		return nil, err
	}
	return k.Seal(plaintext)
}

// Open decrypts what peerPublic sealed for us.
func (c *Cache) Open(peerPublic, sealed []byte) ([]byte, error) {
	k, err := c.Key(peerPublic)
	if err != nil {
		return nil, err
	}
	return k.Open(sealed)
}
