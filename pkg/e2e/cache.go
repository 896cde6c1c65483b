package e2e

import (
	"container/list"
	"sync"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// DefaultCacheSize is the number of peer keys a Cache keeps by default.
const DefaultCacheSize = 4096

// Cache derives and keeps shared keys between one private key and many peer
// public keys, least recently used first out. Safe for concurrent use.
type Cache struct {
	priv *secp256k1.PrivateKey
	size int

	mu    sync.Mutex // guards the fields below
	items map[string]*list.Element
	order *list.List // front = most recently used; values are *entry
}

type entry struct {
	peer string
	key  *Key
}

// NewCache makes a cache for priv holding up to size keys (0 = default).
func NewCache(priv *secp256k1.PrivateKey, size int) *Cache {
	if size <= 0 {
		size = DefaultCacheSize
	}
	return &Cache{priv: priv, size: size, items: make(map[string]*list.Element), order: list.New()}
}

// Key returns the shared key with peerPublic, deriving it on a miss.
func (c *Cache) Key(peerPublic []byte) (*Key, error) {
	c.mu.Lock()
	if el, ok := c.items[string(peerPublic)]; ok {
		c.order.MoveToFront(el)
		k := el.Value.(*entry).key
		c.mu.Unlock()
		return k, nil
	}
	c.mu.Unlock()

	// Derive outside the lock: ECDH is the slow part.
	shared, err := SharedKey(c.priv, peerPublic)
	if err != nil {
		return nil, err
	}
	k, err := NewKey(shared)
	if err != nil {
		return nil, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[string(peerPublic)]; ok {
		return el.Value.(*entry).key, nil
	}
	c.items[string(peerPublic)] = c.order.PushFront(&entry{peer: string(peerPublic), key: k})
	for c.order.Len() > c.size {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*entry).peer)
	}
	return k, nil
}

// Len is the number of cached keys.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

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
