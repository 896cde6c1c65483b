// Package vectors loads testdata/rmb-compat.json, the compatibility vectors
// produced with the reference Go SDK, for tests in any package.
package vectors

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// File is the layout of rmb-compat.json.
type File struct {
	E2E struct {
		CipherHex            string `json:"cipher_hex"`
		Plaintext            string `json:"plaintext"`
		ReceiverE2EPublicHex string `json:"receiver_e2e_public_hex"`
		ReceiverSeedHex      string `json:"receiver_seed_hex"`
		SenderE2EPublicHex   string `json:"sender_e2e_public_hex"`
		SenderSeedHex        string `json:"sender_seed_hex"`
		SharedKeyHex         string `json:"shared_key_hex"`
	} `json:"e2e"`
	Envelopes []struct {
		Name            string `json:"name"`
		ChallengeMD5Hex string `json:"challenge_md5_hex"`
		EnvelopeHex     string `json:"envelope_hex"`
		SignatureHex    string `json:"signature_hex"`
		SignerPublicHex string `json:"signer_public_hex"`
	} `json:"envelopes"`
	Identities []struct {
		Mnemonic        string `json:"mnemonic"`
		KeyType         string `json:"key_type"`
		PublicKeyHex    string `json:"public_key_hex"`
		SeedHex         string `json:"seed_hex"`
		E2EPublicKeyHex string `json:"e2e_public_key_hex"`
	} `json:"identities"`
	JWT []struct {
		Claims struct {
			Exp int64   `json:"exp"`
			Iat int64   `json:"iat"`
			Sid *string `json:"sid"`
			Sub uint32  `json:"sub"`
		} `json:"claims"`
		SignerPublicHex string `json:"signer_public_hex"`
		Token           string `json:"token"`
	} `json:"jwt"`
	Sr25519Signature struct {
		MessageHex   string `json:"message_hex"`
		PublicKeyHex string `json:"public_key_hex"`
		SignatureHex string `json:"signature_hex"`
	} `json:"sr25519_signature"`
}

// Path is the absolute path of testdata/rmb-compat.json.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "rmb-compat.json")
}

// Load reads the vectors or fails the test.
func Load(t testing.TB) *File {
	t.Helper()
	b, err := os.ReadFile(Path())
	if err != nil {
		t.Fatalf("compatibility vectors: %v", err)
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("compatibility vectors: %v", err)
	}
	if len(f.Envelopes) == 0 || len(f.Identities) == 0 || len(f.JWT) == 0 {
		t.Fatalf("compatibility vectors: %s has no envelopes, identities or tokens", Path())
	}
	return &f
}

// Hex decodes a hex string or fails the test.
func Hex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in vectors: %v", err)
	}
	return b
}
