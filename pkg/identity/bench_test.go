package identity_test

import (
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

func BenchmarkTokenVerify(b *testing.B) {
	id, _ := identity.FromSecret("0x"+strings.Repeat("44", 32), identity.Ed25519)
	tok, _ := identity.NewToken(id, 41, "s", time.Now(), time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		p, err := identity.ParseToken(tok)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Verify(id.PublicKey()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSeedFromMnemonic(b *testing.B) {
	for b.Loop() {
		identity.SeedFromMnemonic("bottom drive obey lake curtain smoke basket hold race lonely fit walk")
	}
}
