package e2e_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/rmb-go/rmb/internal/vectors"
	"github.com/rmb-go/rmb/pkg/e2e"
	"github.com/rmb-go/rmb/pkg/identity"
)

func keys(t testing.TB, v *vectors.File) (sender, receiver *identity.Identity) {
	var err error
	if sender, err = identity.FromSecret("0x"+v.E2E.SenderSeedHex, identity.Ed25519); err != nil {
		t.Fatal(err)
	}
	if receiver, err = identity.FromSecret("0x"+v.E2E.ReceiverSeedHex, identity.Ed25519); err != nil {
		t.Fatal(err)
	}
	return sender, receiver
}

func TestVector(t *testing.T) {
	v := vectors.Load(t)
	sender, receiver := keys(t, v)
	if hex.EncodeToString(sender.E2EPublicKey()) != v.E2E.SenderE2EPublicHex ||
		hex.EncodeToString(receiver.E2EPublicKey()) != v.E2E.ReceiverE2EPublicHex {
		t.Fatal("e2e public keys differ from the vectors")
	}
	k1, err := e2e.SharedKey(sender.E2EPrivateKey(), receiver.E2EPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	k2, err := e2e.SharedKey(receiver.E2EPrivateKey(), sender.E2EPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(k1[:]) != v.E2E.SharedKeyHex || k1 != k2 {
		t.Fatalf("shared key %x / %x, want %s", k1, k2, v.E2E.SharedKeyHex)
	}
	key, _ := e2e.NewKey(k2)
	sealed := vectors.Hex(t, v.E2E.CipherHex)
	plain, err := key.Open(sealed)
	if err != nil {
		t.Fatal(err)
	}
	if string(plain) != v.E2E.Plaintext {
		t.Fatalf("opened %q, want %q", plain, v.E2E.Plaintext)
	}
	again := key.SealWithNonce(sealed[:e2e.NonceSize], []byte(v.E2E.Plaintext))
	if !bytes.Equal(again, sealed) {
		t.Fatalf("sealed with the vector nonce:\n got %x\nwant %x", again, sealed)
	}
}

func TestSealOpenAndErrors(t *testing.T) {
	v := vectors.Load(t)
	sender, receiver := keys(t, v)
	cs := e2e.NewCache(sender.E2EPrivateKey(), 2)
	cr := e2e.NewCache(receiver.E2EPrivateKey(), 0)
	a, err := cs.Seal(receiver.E2EPublicKey(), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := cs.Seal(receiver.E2EPublicKey(), []byte("secret"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same text are equal: nonce not random")
	}
	if got, err := cr.Open(sender.E2EPublicKey(), a); err != nil || string(got) != "secret" {
		t.Fatalf("open = %q, %v", got, err)
	}
	tampered := bytes.Clone(a)
	tampered[len(tampered)-1] ^= 1
	if _, err := cr.Open(sender.E2EPublicKey(), tampered); !errors.Is(err, e2e.ErrDecrypt) {
		t.Errorf("tampered: err = %v", err)
	}
	if _, err := cr.Open(sender.E2EPublicKey(), a[:e2e.Overhead-1]); !errors.Is(err, e2e.ErrShort) {
		t.Errorf("short: err = %v", err)
	}
	if _, err := cs.Seal([]byte{2, 1, 2, 3}, []byte("x")); !errors.Is(err, e2e.ErrBadPublicKey) {
		t.Errorf("bad peer key: err = %v", err)
	}
	third, _ := identity.FromSecret("0x"+hex.EncodeToString(bytes.Repeat([]byte{9}, 32)), identity.Ed25519)
	if _, err := e2e.NewCache(third.E2EPrivateKey(), 0).Open(sender.E2EPublicKey(), a); !errors.Is(err, e2e.ErrDecrypt) {
		t.Errorf("wrong receiver: err = %v", err)
	}
	// The cache is bounded.
	cs.Key(third.E2EPublicKey())
	cs.Key(sender.E2EPublicKey())
	if n := cs.Len(); n != 2 {
		t.Errorf("cache holds %d keys, bound is 2", n)
	}
}

func BenchmarkSharedKey(b *testing.B) {
	v := vectors.Load(b)
	sender, receiver := keys(b, v)
	for b.Loop() {
		e2e.SharedKey(sender.E2EPrivateKey(), receiver.E2EPublicKey())
	}
}

func BenchmarkSealOpen256(b *testing.B) {
	v := vectors.Load(b)
	sender, receiver := keys(b, v)
	cs := e2e.NewCache(sender.E2EPrivateKey(), 0)
	cr := e2e.NewCache(receiver.E2EPrivateKey(), 0)
	msg := bytes.Repeat([]byte{'x'}, 256)
	b.SetBytes(256)
	for b.Loop() {
		sealed, _ := cs.Seal(receiver.E2EPublicKey(), msg)
		if _, err := cr.Open(sender.E2EPublicKey(), sealed); err != nil {
			b.Fatal(err)
		}
	}
}
