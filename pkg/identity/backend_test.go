package identity

import (
	stded25519 "crypto/ed25519"
	"crypto/sha512"
	"fmt"
	"testing"
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
		if tbl := negTable(pub); tbl != nil {
			if got := verifyWithTable(pub, tbl, msg, sig); got != want {
				t.Fatalf("verifyWithTable(%x, %x, %x) = %v, crypto/ed25519 says %v", pub, msg, sig, got, want)
			}
		} else if want {
			t.Fatalf("crypto/ed25519 accepts key %x, negTable cannot decode it", pub)
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

// TestHotKeyTables drives keys past hotUses and past maxTables: every
// verdict stays crypto/ed25519's, while tables come and go.
func TestHotKeyTables(t *testing.T) {
	c := newKeyCache()
	type signer struct {
		pub stded25519.PublicKey
		key stded25519.PrivateKey
	}
	signers := make([]signer, maxTables+8)
	for i := range signers {
		seed := sha512.Sum512([]byte(fmt.Sprint("hot", i)))
		key := stded25519.NewKeyFromSeed(seed[:SeedSize])
		signers[i] = signer{key.Public().(stded25519.PublicKey), key}
	}
	tables := func() int {
		n := 0
		for _, s := range signers {
			k, _ := c.ed25519(s.pub)
			if k.negA.Load() != nil {
				n++
			}
		}
		return n
	}
	for round := range 2 * hotUses {
		for i, s := range signers {
			msg := []byte(fmt.Sprint("message", round, i))
			sig := stded25519.Sign(s.key, msg)
			k, err := c.ed25519(s.pub)
			if err != nil {
				t.Fatal(err)
			}
			if !c.verify(k, msg, sig) {
				t.Fatalf("round %d, key %d: a valid signature was refused", round, i)
			}
			bad := append([]byte{}, sig...)
			bad[round%64] ^= 1
			if c.verify(k, msg, bad) {
				t.Fatalf("round %d, key %d: a corrupted signature was accepted", round, i)
			}
			if c.verify(k, append(msg, 'x'), sig) {
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
