package identity

import (
	"crypto/sha512"
	"sync"
	"sync/atomic"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
	"github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/oasisprotocol/curve25519-voi/primitives/sr25519"
)

// A peer verifies every envelope against the key of its sender, and most
// traffic comes from few senders. Decoding a public key (a point
// decompression) and, for ed25519, expanding it into a table of
// multiples costs about a fifth of a verification; keyCache keeps the
// results for the keys seen recently.
//
// An ed25519 key that keeps being used (hotUses verifications) also gets
// a fixed-base table of its multiples, like the one every implementation
// keeps for the base point B. A verification computes [s]B - [k]A; with a
// table for A as well, both products are fixed-base multiplications, and
// the ~253 point doublings of the general double-base method go away:
// about 17 µs instead of 27 µs. The table costs about 60 µs to build and
// 41 KiB to keep, so only maxTables keys have one at a time.

const (
	// maxCachedKeys bounds each map of keyCache. An expanded ed25519 key
	// is about 1.5 KiB.
	maxCachedKeys = 1024
	// maxTables bounds the ed25519 keys with a table of multiples
	// (41 KiB each).
	maxTables = 64
	// hotUses is how many verifications with one key earn it a table.
	hotUses = 16
)

// edKey is a cached ed25519 public key.
type edKey struct {
	public   [PublicKeySize]byte
	expanded *ed25519.ExpandedPublicKey
	uses     atomic.Uint32
	// negA holds the multiples of -A once the key is hot; nil before,
	// and again after its table was evicted.
	negA atomic.Pointer[curve.EdwardsBasepointTable]
}

type keyCache struct {
	mu sync.RWMutex
	ed map[[PublicKeySize]byte]*edKey
	sr map[[PublicKeySize]byte]*sr25519.PublicKey

	tmu    sync.Mutex
	tables map[*edKey]struct{} // the keys holding a table
}

var verifyKeys = newKeyCache()

func newKeyCache() *keyCache {
	return &keyCache{
		ed:     make(map[[PublicKeySize]byte]*edKey),
		sr:     make(map[[PublicKeySize]byte]*sr25519.PublicKey),
		tables: make(map[*edKey]struct{}),
	}
}

// ed25519 returns the cached form of public (32 bytes).
func (c *keyCache) ed25519(public []byte) (*edKey, error) {
	return cached(&c.mu, c.ed, public, newEdKey)
}

func newEdKey(public []byte) (*edKey, error) {
	x, err := ed25519.NewExpandedPublicKey(public)
	if err != nil {
		return nil, err
	}
	return &edKey{public: [PublicKeySize]byte(public), expanded: x}, nil
}

// sr25519 returns the decoded form of public (32 bytes).
func (c *keyCache) sr25519(public []byte) (*sr25519.PublicKey, error) {
	return cached(&c.mu, c.sr, public, sr25519.NewPublicKeyFromBytes)
}

// verify reports whether sig is a valid ed25519 signature of msg by k,
// under crypto/ed25519's rules.
func (c *keyCache) verify(k *edKey, msg, sig []byte) bool {
	if t := k.negA.Load(); t != nil {
		return verifyWithTable(k.public[:], t, msg, sig)
	}
	if k.uses.Add(1) == hotUses {
		if t := c.addTable(k); t != nil {
			return verifyWithTable(k.public[:], t, msg, sig)
		}
	}
	return ed25519.VerifyExpandedWithOptions(k.expanded, msg, sig, stdlibOptions)
}

// addTable builds k's table of multiples of -A, making room among the
// tables by dropping an arbitrary one. It returns nil when the key does
// not decode (it did for NewExpandedPublicKey, so it does not happen).
func (c *keyCache) addTable(k *edKey) *curve.EdwardsBasepointTable {
	t := negTable(k.public[:])
	if t == nil {
		return nil
	}
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if len(c.tables) >= maxTables {
		for old := range c.tables {
			delete(c.tables, old)
			old.negA.Store(nil)
			old.uses.Store(0) // earns a table again after hotUses more
			break
		}
	}
	c.tables[k] = struct{}{}
	k.negA.Store(t)
	return t
}

// negTable returns the fixed-base table of -A for the encoded point A,
// decoded as NewExpandedPublicKey and crypto/ed25519 decode it.
func negTable(public []byte) *curve.EdwardsBasepointTable {
	var enc curve.CompressedEdwardsY
	if _, err := enc.SetBytes(public); err != nil {
		return nil
	}
	var a curve.EdwardsPoint
	if _, err := a.SetCompressedY(&enc); err != nil {
		return nil
	}
	return curve.NewEdwardsBasepointTable(a.Neg(&a))
}

// verifyWithTable is RFC 8032 verification as crypto/ed25519 does it
// (cofactorless, S must be canonical, R compared as encoded), with
// [s]B + [k](-A) computed from two fixed-base tables.
func verifyWithTable(public []byte, negA *curve.EdwardsBasepointTable, msg, sig []byte) bool {
	if len(sig) != RawSignatureSize {
		return false
	}
	var s scalar.Scalar
	if _, err := s.SetCanonicalBytes(sig[32:]); err != nil {
		return false
	}
	h := sha512.New()
	h.Write(sig[:32])
	h.Write(public)
	h.Write(msg)
	var digest [sha512.Size]byte
	var k scalar.Scalar
	if _, err := k.SetBytesModOrderWide(h.Sum(digest[:0])); err != nil {
		return false
	}
	var sB, kA curve.EdwardsPoint
	sB.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &s)
	kA.MulBasepoint(negA, &k)
	var r curve.CompressedEdwardsY
	r.SetEdwardsPoint(sB.Add(&sB, &kA))
	return string(r[:]) == string(sig[:32])
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
