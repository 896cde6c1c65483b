package envelope_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
)

func benchEnvelope(b *testing.B, kt identity.KeyType) (*envelope.Envelope, *identity.Identity) {
	id, err := identity.FromSecret("0x"+string(bytes.Repeat([]byte("ab"), 32)), kt)
	if err != nil {
		b.Fatal(err)
	}
	e := envelope.NewRequest("7e4ac31c-2f0e-4c1b-9a57-111111111111", "calculator.add", bytes.Repeat([]byte{'x'}, 256), 300)
	e.Source, e.Destination = envelope.NewAddress(41, ""), envelope.NewAddress(55, "s1")
	e.Stamp(time.Now())
	e.Sign(id)
	return e, id
}

func BenchmarkChallenge256(b *testing.B) {
	e, _ := benchEnvelope(b, identity.Ed25519)
	b.ReportAllocs()
	for b.Loop() {
		envelope.Challenge(e)
	}
}

func BenchmarkSign(b *testing.B) {
	for _, kt := range []identity.KeyType{identity.Ed25519, identity.Sr25519} {
		b.Run(string(kt), func(b *testing.B) {
			e, id := benchEnvelope(b, kt)
			for b.Loop() {
				e.Sign(id)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, kt := range []identity.KeyType{identity.Ed25519, identity.Sr25519} {
		b.Run(string(kt), func(b *testing.B) {
			e, id := benchEnvelope(b, kt)
			for b.Loop() {
				if err := e.Verify(id.PublicKey()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkReadRouting(b *testing.B) {
	e, _ := benchEnvelope(b, identity.Ed25519)
	wire, _ := envelope.Marshal(e)
	var r envelope.Routing
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		if err := envelope.ReadRouting(wire, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshal(b *testing.B) {
	e, _ := benchEnvelope(b, identity.Ed25519)
	wire, _ := envelope.Marshal(e)
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		if _, err := envelope.Unmarshal(wire, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal(b *testing.B) {
	e, _ := benchEnvelope(b, identity.Ed25519)
	b.ReportAllocs()
	for b.Loop() {
		envelope.Marshal(e)
	}
}
