package identity

import (
	"crypto/sha512"
	"sync"
	"sync/atomic"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
	"github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/oasisprotocol/curve25519-voi/primitives/merlin"
	"github.com/oasisprotocol/curve25519-voi/primitives/sr25519"
)

// A peer verifies every envelope against the key of its sender, and most
// traffic comes from few senders. Decoding a public key (a point
// decompression) and, for ed25519, expanding it into a table of
// multiples costs about a fifth of a verification; keyCache keeps the
// results for the keys seen recently.
//
// A key that keeps being used (hotUses verifications) also gets a
// fixed-base table of its multiples, like the one every implementation
// keeps for the base point B. A verification computes [s]B - [k]A; with a
// table for A as well, both products are fixed-base multiplications, and
// the ~253 point doublings of the general double-base method go away:
// about 17 µs instead of 27 µs for ed25519, and likewise for sr25519 (the
// same curve, in Ristretto form). A table costs about 60 µs to build and
// 41 KiB to keep, so only maxTables keys have one at a time.

const (
	// maxCachedKeys bounds each map of keyCache. An expanded ed25519 key
	// is about 1.5 KiB.
	maxCachedKeys = 1024
	// maxTables bounds the keys with a table of multiples (41 KiB each).
	maxTables = 64
	// hotUses is how many verifications with one key earn it a table.
	hotUses = 16
)

// hotKey is a cached key of either scheme, with its use count and the
// table of multiples of -A once it is hot (nil before, and again after
// the table was evicted).
type hotKey[T any] struct {
	public [PublicKeySize]byte
	uses   atomic.Uint32
	negA   atomic.Pointer[T]
}

// drop forgets the table; the key earns one again after hotUses more
// verifications.
func (k *hotKey[T]) drop() {
	k.negA.Store(nil)
	k.uses.Store(0)
}

// table returns the key's table, building it (newTable) on the use that
// makes the key hot; nil while the key is not hot.
func (k *hotKey[T]) table(c *keyCache, newTable func([]byte) *T) *T {
	if t := k.negA.Load(); t != nil {
		return t
	}
	if k.uses.Add(1) != hotUses {
		return nil
	}
	t := newTable(k.public[:])
	if t != nil {
		// Stored before the key joins the table holders, so that an
		// eviction can only come after and always finds it.
		k.negA.Store(t)
		c.addTable(k)
	}
	return t
}

// edKey is a cached ed25519 public key.
type edKey struct {
	hotKey[curve.EdwardsBasepointTable]
	expanded *ed25519.ExpandedPublicKey
}

// srKey is a cached sr25519 public key.
type srKey struct {
	hotKey[curve.RistrettoBasepointTable]
	decoded *sr25519.PublicKey
}

type keyCache struct {
	mu sync.RWMutex
	ed map[[PublicKeySize]byte]*edKey
	sr map[[PublicKeySize]byte]*srKey

	tmu    sync.Mutex
	tables map[interface{ drop() }]struct{} // the keys holding a table
}

var verifyKeys = newKeyCache()

func newKeyCache() *keyCache {
	return &keyCache{
		ed:     make(map[[PublicKeySize]byte]*edKey),
		sr:     make(map[[PublicKeySize]byte]*srKey),
		tables: make(map[interface{ drop() }]struct{}),
	}
}

// ed25519 returns the cached form of public (32 bytes).
func (c *keyCache) ed25519(public []byte) (*edKey, error) {
	return cached(&c.mu, c.ed, public, func(public []byte) (*edKey, error) {
		x, err := ed25519.NewExpandedPublicKey(public)
		if err != nil {
			return nil, err
		}
		k := &edKey{expanded: x}
		k.public = [PublicKeySize]byte(public)
		return k, nil
	})
}

// sr25519 returns the cached form of public (32 bytes).
func (c *keyCache) sr25519(public []byte) (*srKey, error) {
	return cached(&c.mu, c.sr, public, func(public []byte) (*srKey, error) {
		pk, err := sr25519.NewPublicKeyFromBytes(public)
		if err != nil {
			return nil, err
		}
		k := &srKey{decoded: pk}
		k.public = [PublicKeySize]byte(public)
		return k, nil
	})
}

// addTable makes k one of the keys holding a table, dropping the table of
// an arbitrary other key when there are maxTables already.
func (c *keyCache) addTable(k interface{ drop() }) {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if len(c.tables) >= maxTables {
		for old := range c.tables {
			delete(c.tables, old)
			old.drop()
			break
		}
	}
	c.tables[k] = struct{}{}
}

// verifyEd reports whether sig is a valid ed25519 signature of msg by k,
// under crypto/ed25519's rules.
func (c *keyCache) verifyEd(k *edKey, msg, sig []byte) bool {
	if t := k.table(c, edNegTable); t != nil {
		return verifyEdWithTable(k.public[:], t, msg, sig)
	}
	return ed25519.VerifyExpandedWithOptions(k.expanded, msg, sig, stdlibOptions)
}

// verifySr reports whether sig, which decoded as s, is a valid sr25519
// signature of msg by k in the substrate context, under schnorrkel's
// rules.
func (c *keyCache) verifySr(k *srKey, msg, sig []byte, s *sr25519.Signature) bool {
	if t := k.table(c, srNegTable); t != nil {
		return verifySrWithTable(k.public[:], t, msg, sig)
	}
	return k.decoded.Verify(substrateContext.NewTranscriptBytes(msg), s)
}

// edNegTable returns the fixed-base table of -A for the encoded point A,
// decoded as NewExpandedPublicKey and crypto/ed25519 decode it; nil if
// it does not decode.
func edNegTable(public []byte) *curve.EdwardsBasepointTable {
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

// srNegTable is edNegTable for a Ristretto-encoded sr25519 key.
func srNegTable(public []byte) *curve.RistrettoBasepointTable {
	var enc curve.CompressedRistretto
	if _, err := enc.SetBytes(public); err != nil {
		return nil
	}
	var a curve.RistrettoPoint
	if _, err := a.SetCompressed(&enc); err != nil {
		return nil
	}
	return curve.NewRistrettoBasepointTable(a.Neg(&a))
}

// verifyEdWithTable is RFC 8032 verification as crypto/ed25519 does it
// (cofactorless, S must be canonical, R compared as encoded), with
// [s]B + [k](-A) computed from two fixed-base tables.
func verifyEdWithTable(public []byte, negA *curve.EdwardsBasepointTable, msg, sig []byte) bool {
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

// substrateTranscript is the merlin transcript of the substrate signing
// context, before the message (what substrateContext holds).
var substrateTranscript = func() *merlin.Transcript {
	t := merlin.NewTranscript("SigningContext")
	t.AppendMessage("", []byte("substrate"))
	return t
}()

// verifySrWithTable is schnorrkel's verification (as curve25519-voi's
// sr25519 does it: the signature marked in its top bit, s canonical, the
// challenge from the merlin transcript of the context, the message, A and
// R), with [s]B + [k](-A) computed from two fixed-base tables and
// compared with R as encoded; a Ristretto encoding is unique, so that is
// the same as comparing the points.
func verifySrWithTable(public []byte, negA *curve.RistrettoBasepointTable, msg, sig []byte) bool {
	if len(sig) != RawSignatureSize || sig[63]&0x80 == 0 {
		return false
	}
	sb := [32]byte(sig[32:])
	sb[31] &= 0x7f
	var s scalar.Scalar
	if _, err := s.SetCanonicalBytes(sb[:]); err != nil {
		return false
	}
	t := substrateTranscript.Clone()
	t.AppendMessage("sign-bytes", msg)
	t.AppendMessage("proto-name", []byte("Schnorr-sig"))
	t.AppendMessage("sign:pk", public)
	t.AppendMessage("sign:R", sig[:32])
	var c [64]byte
	t.ExtractBytes(c[:], "sign:c")
	var k scalar.Scalar
	if _, err := k.SetBytesModOrderWide(c[:]); err != nil {
		return false
	}
	var sB, kA curve.RistrettoPoint
	sB.MulBasepoint(curve.RISTRETTO_BASEPOINT_TABLE, &s)
	kA.MulBasepoint(negA, &k)
	var r curve.CompressedRistretto
	r.SetRistrettoPoint(sB.Add(&sB, &kA))
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
