// Package identity holds what a twin is made of: its secret, its signing key
// (ed25519 or sr25519), its end-to-end secp256k1 key and the self-signed JWT
// it presents to a relay.
//
// A secret is a BIP-39 English mnemonic or a 0x-prefixed hex seed. Mnemonics
// become 32-byte seeds the substrate way (PROTOCOL.md §1): the mnemonic's
// entropy bytes, not its words, are fed to PBKDF2-HMAC-SHA512 with the salt
// "mnemonic" and 2048 rounds, and the first 32 bytes are the seed. The same
// seed is the ed25519 seed, the sr25519 mini secret and the secp256k1 scalar.
//
// Signatures on the wire are 65 bytes: a type byte ('e' for ed25519, 's' for
// sr25519 with the signing context "substrate") followed by the raw 64-byte
// signature. Verify accepts only that form; VerifyRaw takes a bare 64-byte
// signature and tries ed25519 first, then sr25519, as the registrar does.
//
// Both schemes are curve25519-voi's (Oasis Protocol): it signs and verifies
// ed25519 about a third faster than crypto/ed25519 and sr25519 two to three
// times faster than go-schnorrkel. Verification uses the crypto/ed25519
// rules (backend_test.go holds the two to the same verdicts), and decoded
// public keys are cached (keycache.go).
package identity
