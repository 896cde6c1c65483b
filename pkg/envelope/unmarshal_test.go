package envelope

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/rmb-go/rmb/internal/vectors"
	"github.com/rmb-go/rmb/pkg/identity"
)

// typicalEnvelopes are envelopes as peers and relays write them: the
// reference SDK's vectors, and one of each kind from this package.
func typicalEnvelopes(t testing.TB) [][]byte {
	var out [][]byte
	for _, c := range vectors.Load(t).Envelopes {
		out = append(out, vectors.Hex(t, c.EnvelopeHex))
	}
	id, err := identity.FromSecret("0x"+string(bytes.Repeat([]byte("ab"), 32)), identity.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	tags, schema := "fail-fast", "application/json"
	req := NewRequest("7e4ac31c-2f0e-4c1b-9a57-111111111111", "calculator.add", bytes.Repeat([]byte{'x'}, 256), 300)
	req.Tags, req.Schema = &tags, &schema
	resp := NewResponse("7e4ac31c-2f0e-4c1b-9a57-111111111111", nil, 300)
	resp.Payload = &Envelope_Cipher{Cipher: bytes.Repeat([]byte{7}, 300)}
	fail := NewError("7e4ac31c-2f0e-4c1b-9a57-111111111111", CodeTimeout, "no answer", 300)
	for _, e := range []*Envelope{req, resp, fail} {
		e.Source, e.Destination = NewAddress(41, ""), NewAddress(55, "s1")
		e.Relays = []string{"r1.example", "r2.example"}
		e.Stamp(time.Unix(1700000000, 0))
		e.Sign(id)
		b, err := Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzUnmarshalVT checks that Unmarshal gives what proto.Unmarshal gives,
// whichever way it decodes (the generated decoder or proto.Unmarshal).
func FuzzUnmarshalVT(f *testing.F) {
	for _, b := range typicalEnvelopes(f) {
		f.Add(b)
	}
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(num, protowire.BytesType), s)
	}
	for _, b := range [][]byte{
		{},
		append(str(1, "a"), str(1, "b")...),   // a field twice: the last wins
		append(str(13, "p"), str(14, "c")...), // two members of a oneof
		append(str(7, ""), str(15, "")...),    // two members of a oneof
		str(1, "\xff"),                        // invalid UTF-8
		str(2, "\xff"), str(10, "\xc3"), str(11, "\xff"), str(17, "\xed\xa0\x80"),
		str(5, string(str(2, "\xff"))), str(6, string(str(2, "\xff"))),
		str(7, string(str(1, "\xff"))), str(12, string(str(2, "\xff"))),
		str(99, "x"),                // unknown field
		str(5, string(str(3, "x"))), // unknown field of Address
		append(str(5, string(str(2, "a"))), str(5, "")...), // a message twice: merged
		str(8, string(str(1, "x"))),                        // a field of Response (reserved)
		protowire.AppendVarint(tag(3, protowire.VarintType), 1<<63),
		protowire.AppendVarint(tag(1, protowire.VarintType), 1), // wrong wire type
		str(9, ""), str(13, ""), str(2, ""), // empty but present
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := new(Envelope)
		werr := proto.Unmarshal(b, want)
		got, err := Unmarshal(b, 1<<30)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%x: error %v, proto.Unmarshal %v", b, err, werr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatalf("%x:\n got %v\nwant %v", b, got, want)
		}
	})
}

// TestUnmarshalVTTaken checks that usual envelopes take the generated
// decoder, so that one that always falls back fails, and that the fields
// do not alias the caller's buffer.
func TestUnmarshalVTTaken(t *testing.T) {
	for i, b := range typicalEnvelopes(t) {
		if !unmarshalVT(b, new(Envelope)) {
			t.Errorf("envelope %d: generated decoder not taken", i)
		}
		e, err := Unmarshal(b, 0)
		if err != nil {
			t.Fatal(err)
		}
		before := proto.Clone(e)
		for j := range b {
			b[j] = ^b[j]
		}
		if !proto.Equal(e, before) {
			t.Errorf("envelope %d changed with the buffer it was decoded from", i)
		}
	}
}
