package identity

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	bip39 "github.com/cosmos/go-bip39"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"github.com/oasisprotocol/curve25519-voi/primitives/sr25519"
)

// KeyType names a signing scheme.
type KeyType string

// The signing schemes a twin may use.
const (
	Ed25519 KeyType = "ed25519"
	Sr25519 KeyType = "sr25519"
)

// Signature type bytes, the first byte of every signature on the wire.
const (
	TypeByteEd25519 byte = 'e' // 0x65
	TypeByteSr25519 byte = 's' // 0x73
)

// Sizes of keys and signatures.
const (
	SeedSize         = 32
	PublicKeySize    = 32
	SignatureSize    = 65 // type byte + raw signature
	RawSignatureSize = 64
	E2EPublicKeySize = 33 // compressed secp256k1 point
)

// Errors callers act on.
var (
	ErrBadSecret    = errors.New("identity: secret is neither a valid mnemonic nor a 0x hex seed of 32 bytes")
	ErrBadKeyType   = errors.New("identity: unknown key type (want ed25519 or sr25519)")
	ErrBadSignature = errors.New("identity: bad signature")
)

// ParseKeyType reads "ed25519" or "sr25519" (case-insensitive).
func ParseKeyType(s string) (KeyType, error) {
	switch KeyType(strings.ToLower(strings.TrimSpace(s))) {
	case Ed25519:
		return Ed25519, nil
	case Sr25519:
		return Sr25519, nil
	}
	return "", fmt.Errorf("%w: %q", ErrBadKeyType, s)
}

// SeedFromSecret turns a mnemonic or a 0x-prefixed hex seed into the 32-byte
// seed every key of the twin derives from.
func SeedFromSecret(secret string) ([]byte, error) {
	secret = strings.TrimSpace(secret)
	if strings.HasPrefix(secret, "0x") || strings.HasPrefix(secret, "0X") {
		digits := secret[2:]
		seed, err := hex.DecodeString(digits)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: a 0x seed is hex digits only", ErrBadSecret)
		case len(seed) != SeedSize:
			return nil, fmt.Errorf("%w: a 0x seed has %d hex digits, this one %d", ErrBadSecret, 2*SeedSize, len(digits))
		}
		return seed, nil
	}
	return SeedFromMnemonic(secret)
}

// checkMnemonic says what is wrong with words as a BIP-39 English
// mnemonic, without quoting any of them (they are a secret).
func checkMnemonic(words []string) error {
	switch n := len(words); {
	case n == 0:
		return fmt.Errorf("%w: it is empty", ErrBadSecret)
	case n%3 != 0 || n < 12 || n > 24:
		return fmt.Errorf("%w: a mnemonic has 12, 15, 18, 21 or 24 words, this one %d", ErrBadSecret, n)
	}
	var unknown []string
	for i, w := range words {
		if _, ok := bip39.ReverseWordMap[w]; !ok {
			unknown = append(unknown, strconv.Itoa(i+1))
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%w: word %s not in the BIP-39 English word list (lower case)", ErrBadSecret, strings.Join(unknown, ", "))
	}
	return nil
}

// SeedFromMnemonic derives the substrate seed of a BIP-39 English mnemonic
// (no passphrase).
func SeedFromMnemonic(mnemonic string) ([]byte, error) {
	fields := strings.Fields(mnemonic)
	if err := checkMnemonic(fields); err != nil {
		return nil, err
	}
	words := strings.Join(fields, " ")
	// MnemonicToByteArray checks the words and the checksum and returns the
	// entropy and checksum bits as one big-endian number.
	withChecksum, err := bip39.MnemonicToByteArray(words)
	if err != nil {
		return nil, fmt.Errorf("%w: the checksum does not match: a word is wrong or out of place", ErrBadSecret)
	}
	bits := len(strings.Fields(words)) * 11
	checksumBits := bits % 32
	entropy := new(big.Int).Rsh(new(big.Int).SetBytes(withChecksum), uint(checksumBits)).
		FillBytes(make([]byte, (bits-checksumBits)/8))
	// The standard library's PBKDF2 takes the password as a string; the
	// entropy bytes pass through unchanged (a Go string is any bytes).
	full, err := pbkdf2.Key(sha512.New, string(entropy), []byte("mnemonic"), 2048, 64)
	if err != nil {
		return nil, fmt.Errorf("identity: pbkdf2: %w", err)
	}
	return full[:SeedSize], nil
}

// NewMnemonic returns a fresh 12-word BIP-39 English mnemonic.
func NewMnemonic() (string, error) {
	entropy, err := bip39.NewEntropy(128)
	if err != nil {
		return "", err
	}
	return bip39.NewMnemonic(entropy)
}

// Identity is a twin's key material. It is safe for concurrent use.
type Identity struct {
	keyType KeyType
	public  []byte

	ed    ed25519.PrivateKey    // set for Ed25519
	sr    *sr25519.KeyPair      // set for Sr25519
	e2    *secp256k1.PrivateKey // end-to-end key
	e2pub []byte                // compressed
}

// FromSecret builds an identity from a mnemonic or 0x hex seed.
func FromSecret(secret string, kt KeyType) (*Identity, error) {
	seed, err := SeedFromSecret(secret)
	if err != nil {
		return nil, err
	}
	return FromSeed(seed, kt)
}

// FromSeed builds an identity from a 32-byte seed.
func FromSeed(seed []byte, kt KeyType) (*Identity, error) {
	if len(seed) != SeedSize {
		return nil, ErrBadSecret
	}
	id := &Identity{keyType: kt}
	switch kt {
	case Ed25519:
		id.ed = ed25519.NewKeyFromSeed(seed)
		id.public = []byte(id.ed.Public().(ed25519.PublicKey))
	case Sr25519:
		mini, err := sr25519.NewMiniSecretKeyFromBytes(seed)
		if err != nil {
			return nil, fmt.Errorf("identity: sr25519 key: %w", err)
		}
		// Substrate expands the mini secret the ed25519 way.
		id.sr = mini.ExpandEd25519().KeyPair()
		pub, err := id.sr.PublicKey().MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("identity: sr25519 public key: %w", err)
		}
		id.public = pub
	default:
		return nil, fmt.Errorf("%w: %q", ErrBadKeyType, kt)
	}
	id.e2 = secp256k1.PrivKeyFromBytes(seed)
	id.e2pub = id.e2.PubKey().SerializeCompressed()
	return id, nil
}

// KeyType is the signing scheme.
func (id *Identity) KeyType() KeyType { return id.keyType }

// PublicKey is the 32-byte signing public key. Do not modify it.
func (id *Identity) PublicKey() []byte { return id.public }

// E2EPrivateKey is the secp256k1 key used for end-to-end encryption.
func (id *Identity) E2EPrivateKey() *secp256k1.PrivateKey { return id.e2 }

// E2EPublicKey is the 33-byte compressed e2e public key. Do not modify it.
func (id *Identity) E2EPublicKey() []byte { return id.e2pub }

// Sign returns the 65-byte type-prefixed signature of msg.
func (id *Identity) Sign(msg []byte) []byte {
	out := make([]byte, 1, SignatureSize)
	switch id.keyType {
	case Ed25519:
		out[0] = TypeByteEd25519
	default:
		out[0] = TypeByteSr25519
	}
	return append(out, id.SignRaw(msg)...)
}

// SignRaw returns the bare 64-byte signature of msg.
func (id *Identity) SignRaw(msg []byte) []byte {
	if id.keyType == Ed25519 {
		return ed25519.Sign(id.ed, msg)
	}
	sig, err := id.sr.Sign(rand.Reader, substrateContext.NewTranscriptBytes(msg))
	if err != nil {
		// Sign fails only when the system random source does.
		panic(fmt.Sprintf("identity: sr25519 sign: %v", err))
	}
	enc, _ := sig.MarshalBinary()
	return enc
}

// substrateContext is the signing context of Substrate's sr25519
// signatures.
var substrateContext = sr25519.NewSigningContext([]byte("substrate"))

// Verify checks a 65-byte type-prefixed signature of msg against a 32-byte
// public key. The type byte picks the scheme.
func Verify(public, msg, sig []byte) error {
	if len(sig) != SignatureSize {
		return fmt.Errorf("%w: length %d, want %d", ErrBadSignature, len(sig), SignatureSize)
	}
	switch sig[0] {
	case TypeByteEd25519:
		return verifyEd25519(public, msg, sig[1:])
	case TypeByteSr25519:
		return verifySr25519(public, msg, sig[1:])
	}
	return fmt.Errorf("%w: unknown type byte 0x%02x", ErrBadSignature, sig[0])
}

// VerifyRaw checks a bare 64-byte signature, trying ed25519 then sr25519.
func VerifyRaw(public, msg, sig []byte) error {
	if len(sig) != RawSignatureSize {
		return fmt.Errorf("%w: length %d, want %d", ErrBadSignature, len(sig), RawSignatureSize)
	}
	if verifyEd25519(public, msg, sig) == nil {
		return nil
	}
	return verifySr25519(public, msg, sig)
}

func verifyEd25519(public, msg, sig []byte) error {
	if len(public) != PublicKeySize {
		return fmt.Errorf("%w: public key length %d", ErrBadSignature, len(public))
	}
	var ok bool
	if k, err := verifyKeys.ed25519(public); err == nil {
		ok = verifyKeys.verifyEd(k, msg, sig)
	} else {
		ok = ed25519.VerifyWithOptions(public, msg, sig, stdlibOptions)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}

// stdlibOptions accept exactly the ed25519 signatures Go's crypto/ed25519
// accepts (cofactorless, RFC 8032 without the extra key checks), which is
// what the reference SDK and relay use.
var stdlibOptions = &ed25519.Options{Verify: ed25519.VerifyOptionsStdLib}

func verifySr25519(public, msg, sig []byte) error {
	if len(public) != PublicKeySize || len(sig) != RawSignatureSize {
		return ErrBadSignature
	}
	k, err := verifyKeys.sr25519(public)
	if err != nil {
		return fmt.Errorf("%w: bad sr25519 public key", ErrBadSignature)
	}
	s, err := sr25519.NewSignatureFromBytes(sig)
	if err != nil {
		return fmt.Errorf("%w: malformed sr25519 signature", ErrBadSignature)
	}
	if !verifyKeys.verifySr(k, msg, sig, s) {
		return ErrBadSignature
	}
	return nil
}
