package e2e

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// Sizes of the sealed format.
const (
	NonceSize = 12
	TagSize   = 16
	Overhead  = NonceSize + TagSize
)

// Errors callers act on.
var (
	ErrBadPublicKey = errors.New("e2e: invalid secp256k1 public key")
	ErrShort        = errors.New("e2e: cipher text shorter than nonce and tag")
	ErrDecrypt      = errors.New("e2e: decryption failed")
)

// SharedKey is SHA-256 of the x coordinate of ECDH(priv, peer).
func SharedKey(priv *secp256k1.PrivateKey, peerPublic []byte) ([32]byte, error) {
	pub, err := secp256k1.ParsePubKey(peerPublic)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %v", ErrBadPublicKey, err)
	}
	var point, scalar secp256k1.JacobianPoint
	pub.AsJacobian(&point)
	secp256k1.ScalarMultNonConst(&priv.Key, &point, &scalar)
	scalar.ToAffine()
	x := scalar.X.Bytes()
	return sha256.Sum256(x[:]), nil
}

// Key is a derived shared key ready to seal and open. Safe for concurrent
// use.
type Key struct {
	aead cipher.AEAD
}

// NewKey wraps a 32-byte shared key.
func NewKey(shared [32]byte) (*Key, error) {
	block, err := aes.NewCipher(shared[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Key{aead: aead}, nil
}

// Seal encrypts plaintext with a random nonce.
func (k *Key) Seal(plaintext []byte) ([]byte, error) {
	var nonce [NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("e2e: nonce: %w", err)
	}
	return k.SealWithNonce(nonce[:], plaintext), nil
}

// SealWithNonce encrypts with the given 12-byte nonce. Never reuse a nonce
// with the same key; it exists for test vectors.
func (k *Key) SealWithNonce(nonce, plaintext []byte) []byte {
	out := make([]byte, NonceSize, NonceSize+len(plaintext)+TagSize)
	copy(out, nonce)
	return k.aead.Seal(out, nonce, plaintext, nil)
}

// Open decrypts nonce || ciphertext || tag.
func (k *Key) Open(sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, ErrShort
	}
	out, err := k.aead.Open(nil, sealed[:NonceSize], sealed[NonceSize:], nil)
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}
