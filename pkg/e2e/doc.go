// Package e2e encrypts envelope payloads end to end between twins
// (PROTOCOL.md §7).
//
// Each twin has a secp256k1 key (derived from the same seed as its signing
// key). The shared key of two twins is SHA-256 of the x coordinate of the
// ECDH point; payloads are sealed with AES-256-GCM as
// nonce(12) || ciphertext || tag(16), with a random nonce and no associated
// data. ECDH costs about 100 µs, so a Cache keeps the derived AEADs per peer
// key, bounded in size.
package e2e
