package identity

import (
	stded25519 "crypto/ed25519"
	"crypto/sha512"
	"fmt"
	"testing"

	"github.com/oasisprotocol/curve25519-voi/primitives/sr25519"
)

// The signing code is curve25519-voi's, chosen for speed; the reference
// SDK and relay use Go's crypto/ed25519 semantics. These tests hold the
// two to the same answers: the same deterministic signatures, and the same
// verdict on any (key, message, signature), valid or not.

func TestEd25519SignaturesMatchStdlib(t *testing.T) {
	for i := range 64 {
		seed := sha512.Sum512([]byte(fmt.Sprint("seed", i)))
		id, err := FromSeed(seed[:SeedSize], Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		std := stded25519.NewKeyFromSeed(seed[:SeedSize])
		if string(id.PublicKey()) != string(std.Public().(stded25519.PublicKey)) {
			t.Fatalf("seed %d: public keys differ", i)
		}
		msg := seed[SeedSize : SeedSize+i%32]
		if got, want := id.SignRaw(msg), stded25519.Sign(std, msg); string(got) != string(want) {
			t.Fatalf("seed %d: signature %x, crypto/ed25519 gives %x", i, got, want)
		}
	}
}

// FuzzEd25519VerifyMatchesStdlib feeds arbitrary keys and signatures, and
// mutations of valid ones, to both verifiers.
func FuzzEd25519VerifyMatchesStdlib(f *testing.F) {
	std := stded25519.NewKeyFromSeed(make([]byte, 32))
	pub := []byte(std.Public().(stded25519.PublicKey))
	for _, m := range []string{"", "hello", "0123456789abcdef"} {
		f.Add(pub, []byte(m), stded25519.Sign(std, []byte(m)))
	}
	// A small-order key and an all-zero signature: where verifiers
	// commonly disagree.
	identityPoint := make([]byte, 32)
	identityPoint[0] = 1
	f.Add(identityPoint, []byte("x"), make([]byte, 64))
	// R = identity, S = 0 under the identity key: valid in the
	// cofactorless equation.
	f.Add(identityPoint, []byte("x"), append(append([]byte{}, identityPoint...), make([]byte, 32)...))
	// A valid signature with S + L (non-canonical S).
	valid := stded25519.Sign(std, []byte("hello"))
	f.Add(pub, []byte("hello"), addL(valid))
	// A key whose y is not reduced (y = p): non-canonical encoding.
	f.Add(nonCanonicalY(), []byte("x"), valid)
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		if len(pub) != PublicKeySize || len(sig) != RawSignatureSize {
			return
		}
		want := stded25519.Verify(pub, msg, sig)
		got := verifyEd25519(pub, msg, sig) == nil
		if got != want {
			t.Fatalf("verify(%x, %x, %x) = %v, crypto/ed25519 says %v", pub, msg, sig, got, want)
		}
		// The path of hot keys, with a table of multiples of -A.
		if tbl := edNegTable(pub); tbl != nil {
			if got := verifyEdWithTable(pub, tbl, msg, sig); got != want {
				t.Fatalf("verifyEdWithTable(%x, %x, %x) = %v, crypto/ed25519 says %v", pub, msg, sig, got, want)
			}
		} else if want {
			t.Fatalf("crypto/ed25519 accepts key %x, edNegTable cannot decode it", pub)
		}
	})
}

// addL returns sig with the group order L added to its S half.
func addL(sig []byte) []byte {
	l := [32]byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	out := append([]byte{}, sig...)
	carry := 0
	for i := range 32 {
		v := int(out[32+i]) + int(l[i]) + carry
		out[32+i] = byte(v)
		carry = v >> 8
	}
	return out
}

// nonCanonicalY is the encoding of y = p = 2^255 - 19.
func nonCanonicalY() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = 0xff
	}
	b[0] = 0xed
	b[31] = 0x7f
	return b
}

// TestHotKeyTables drives keys of both schemes past hotUses and past
// maxTables: every verdict stays the reference's, while tables come and
// go under one bound.
func TestHotKeyTables(t *testing.T) {
	c := newKeyCache()
	signers := make([]*Identity, maxTables+8)
	for i := range signers {
		kt := Ed25519
		if i%2 == 1 {
			kt = Sr25519
		}
		seed := sha512.Sum512([]byte(fmt.Sprint("hot", i)))
		id, err := FromSeed(seed[:SeedSize], kt)
		if err != nil {
			t.Fatal(err)
		}
		signers[i] = id
	}
	verify := func(id *Identity, msg, sig []byte) bool {
		if id.KeyType() == Ed25519 {
			k, err := c.ed25519(id.PublicKey())
			if err != nil {
				t.Fatal(err)
			}
			return c.verifyEd(k, msg, sig)
		}
		k, err := c.sr25519(id.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		s, err := sr25519.NewSignatureFromBytes(sig)
		return err == nil && c.verifySr(k, msg, sig, s)
	}
	tables := func() int {
		n := 0
		for _, id := range signers {
			var hot bool
			if id.KeyType() == Ed25519 {
				k, _ := c.ed25519(id.PublicKey())
				hot = k.negA.Load() != nil
			} else {
				k, _ := c.sr25519(id.PublicKey())
				hot = k.negA.Load() != nil
			}
			if hot {
				n++
			}
		}
		return n
	}
	for round := range 2 * hotUses {
		for i, id := range signers {
			msg := []byte(fmt.Sprint("message", round, i))
			sig := id.SignRaw(msg)
			if !verify(id, msg, sig) {
				t.Fatalf("round %d, key %d: a valid signature was refused", round, i)
			}
			bad := append([]byte{}, sig...)
			bad[round%32] ^= 1
			if verify(id, msg, bad) {
				t.Fatalf("round %d, key %d: a corrupted signature was accepted", round, i)
			}
			if verify(id, append(msg, 'x'), sig) {
				t.Fatalf("round %d, key %d: a signature of another message was accepted", round, i)
			}
		}
		// Each round is 3 verifications per key: the tables fill once
		// the keys reach hotUses, and stay bounded.
		switch n := tables(); {
		case 3*(round+1) < hotUses && n != 0:
			t.Fatalf("round %d: %d tables before any key was hot", round, n)
		case n > maxTables:
			t.Fatalf("round %d: %d tables, bound %d", round, n, maxTables)
		}
	}
	if n := tables(); n != maxTables {
		t.Fatalf("%d tables after every key was hot, want %d", n, maxTables)
	}
}

// voiSr25519Verify is curve25519-voi's own sr25519 verification, which
// the table path of hot keys must agree with.
func voiSr25519Verify(pub, msg, sig []byte) bool {
	pk, err := sr25519.NewPublicKeyFromBytes(pub)
	if err != nil {
		return false
	}
	s, err := sr25519.NewSignatureFromBytes(sig)
	if err != nil {
		return false
	}
	return pk.Verify(substrateContext.NewTranscriptBytes(msg), s)
}

func srSigner(t testing.TB, i int) *Identity {
	seed := sha512.Sum512([]byte(fmt.Sprint("sr", i)))
	id, err := FromSeed(seed[:SeedSize], Sr25519)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSr25519TableMatchesVoi signs with several keys and checks the table
// path on the signatures, corrupted ones and other messages.
func TestSr25519TableMatchesVoi(t *testing.T) {
	for i := range 8 {
		id := srSigner(t, i)
		pub := id.PublicKey()
		tbl := srNegTable(pub)
		if tbl == nil {
			t.Fatal("srNegTable: a valid key does not decode")
		}
		for j := range 16 {
			msg := []byte(fmt.Sprint("message ", i, j))
			sig := id.SignRaw(msg)
			if !verifySrWithTable(pub, tbl, msg, sig) {
				t.Fatalf("key %d, message %d: a valid signature was refused", i, j)
			}
			bad := append([]byte{}, sig...)
			bad[(i*16+j)%64] ^= 1 << (j % 8)
			if got, want := verifySrWithTable(pub, tbl, msg, bad), voiSr25519Verify(pub, msg, bad); got != want || got {
				t.Fatalf("key %d, message %d: corrupted signature: table %v, voi %v", i, j, got, want)
			}
			if verifySrWithTable(pub, tbl, append(msg, '!'), sig) {
				t.Fatalf("key %d, message %d: a signature of another message was accepted", i, j)
			}
			if other := srSigner(t, i+100).PublicKey(); verifySrWithTable(other, srNegTable(other), msg, sig) {
				t.Fatalf("key %d, message %d: accepted under another key", i, j)
			}
		}
	}
}

// FuzzSr25519TableMatchesVoi feeds arbitrary keys and signatures, and
// mutations of valid ones, to the table path and to curve25519-voi.
func FuzzSr25519TableMatchesVoi(f *testing.F) {
	id := srSigner(f, 0)
	pub := id.PublicKey()
	for _, m := range []string{"", "hello", "0123456789abcdef"} {
		f.Add(pub, []byte(m), id.SignRaw([]byte(m)))
	}
	valid := id.SignRaw([]byte("hello"))
	unmarked := append([]byte{}, valid...)
	unmarked[63] &= 0x7f
	f.Add(pub, []byte("hello"), unmarked) // an ed25519-style signature
	f.Add(pub, []byte("hello"), addL(valid))
	f.Add(make([]byte, 32), []byte("x"), make([]byte, 64)) // identity key
	f.Fuzz(func(t *testing.T, pub, msg, sig []byte) {
		if len(pub) != PublicKeySize || len(sig) != RawSignatureSize {
			return
		}
		want := voiSr25519Verify(pub, msg, sig)
		if got := verifySr25519(pub, msg, sig) == nil; got != want {
			t.Fatalf("verifySr25519(%x, %x, %x) = %v, voi says %v", pub, msg, sig, got, want)
		}
		tbl := srNegTable(pub)
		if tbl == nil {
			if _, err := sr25519.NewPublicKeyFromBytes(pub); err == nil {
				t.Fatalf("voi decodes key %x, srNegTable does not", pub)
			}
			return
		}
		if got := verifySrWithTable(pub, tbl, msg, sig); got != want {
			t.Fatalf("verifySrWithTable(%x, %x, %x) = %v, voi says %v", pub, msg, sig, got, want)
		}
	})
}
