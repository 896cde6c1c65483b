package relay

import (
	"context"
	"crypto/ed25519"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/rmb-go/rmb/internal/vectors"
	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/identity"
)

// This file is a client written only from PROTOCOL.md and the vectors: the
// JWT is built by hand from base64, JSON and stdlib ed25519, the envelope
// with the generated protobuf types and a hand-written challenge. Only the
// registration of the twins uses the SDK.

// rawChallenge is PROTOCOL.md §3 "The signed challenge", written from the
// text.
func rawChallenge(e *envelope.Envelope) []byte {
	h := md5.New()
	w := func(s string) { h.Write([]byte(s)) }
	n := func(v uint64) { w(strconv.FormatUint(v, 10)) }
	w(e.Uid)
	if e.Tags != nil {
		w(*e.Tags)
	}
	n(e.Timestamp)
	n(e.Expiration)
	for _, a := range []*envelope.Address{e.Source, e.Destination} {
		if a != nil {
			n(uint64(a.Twin))
			if a.Connection != nil {
				w(*a.Connection)
			}
		}
	}
	switch m := e.Message.(type) {
	case *envelope.Envelope_Request:
		w(m.Request.Command)
	case *envelope.Envelope_Error:
		n(uint64(m.Error.Code))
		w(m.Error.Message)
	}
	if e.Schema != nil {
		w(*e.Schema)
	}
	if e.Federation != nil {
		w(*e.Federation)
	}
	switch p := e.Payload.(type) {
	case *envelope.Envelope_Plain:
		h.Write(p.Plain)
	case *envelope.Envelope_Cipher:
		h.Write(p.Cipher)
	}
	for _, r := range e.Relays {
		w(r)
	}
	return h.Sum(nil)
}

// rawSign is the 65-byte wire signature: 'e' then ed25519.
func rawSign(key ed25519.PrivateKey, msg []byte) []byte {
	return append([]byte{'e'}, ed25519.Sign(key, msg)...)
}

// rawToken builds the relay JWT of PROTOCOL.md §4 by hand.
func rawToken(t *testing.T, key ed25519.PrivateKey, twin uint32, sid string) string {
	b64 := base64.RawURLEncoding
	header := b64.EncodeToString([]byte(`{"alg":"RS512","typ":"JWT"}`))
	now := time.Now().Unix()
	claims, err := json.Marshal(map[string]any{"sub": twin, "iat": now, "exp": now + 60, "sid": sid})
	if err != nil {
		t.Fatal(err)
	}
	input := header + "." + b64.EncodeToString(claims)
	return input + "." + b64.EncodeToString(rawSign(key, []byte(input)))
}

func TestRawChallengeMatchesVectors(t *testing.T) {
	v := vectors.Load(t)
	for _, ve := range v.Envelopes {
		var e envelope.Envelope
		if err := proto.Unmarshal(vectors.Hex(t, ve.EnvelopeHex), &e); err != nil {
			t.Fatalf("%s: %v", ve.Name, err)
		}
		if got := hex.EncodeToString(rawChallenge(&e)); got != ve.ChallengeMD5Hex {
			t.Errorf("%s: challenge %s, want %s", ve.Name, got, ve.ChallengeMD5Hex)
		}
		// The relay reads the same routing fields as the full decode.
		var rt envelope.Routing
		if err := envelope.ReadRouting(vectors.Hex(t, ve.EnvelopeHex), &rt); err != nil {
			t.Fatalf("%s: %v", ve.Name, err)
		}
		if string(rt.UID) != e.Uid || rt.Source.Twin != e.GetSource().GetTwin() || rt.Destination.Twin != e.GetDestination().GetTwin() {
			t.Errorf("%s: routing %+v", ve.Name, rt)
		}
	}
}

func TestRawProtocolClient(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	tr := startRelay(t, reg, nil, ln, nil)

	// Two twins with stdlib keys (registered through the SDK).
	type rawTwin struct {
		key ed25519.PrivateKey
		num uint32
	}
	mk := func() rawTwin {
		seed := make([]byte, ed25519.SeedSize)
		rand.Read(seed)
		id, err := identity.FromSeed(seed, identity.Ed25519)
		if err != nil {
			t.Fatal(err)
		}
		tw := &twin{id: id}
		tw.num = reg.newTwinWith(t, id, domain)
		return rawTwin{key: ed25519.NewKeyFromSeed(seed), num: tw.num}
	}
	alice, bob := mk(), mk()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	connect := func(tw rawTwin, sid string) *websocket.Conn {
		c, _, err := websocket.Dial(ctx, "ws://"+domain+"/?"+rawToken(t, tw.key, tw.num, sid), nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	ca := connect(alice, "raw")
	cb := connect(bob, "")
	waitSession(t, tr.Relay, SessionKey{bob.num, ""}, true)

	sid := "raw"
	req := &envelope.Envelope{
		Uid:         "raw-1",
		Timestamp:   uint64(time.Now().Unix()),
		Expiration:  60,
		Source:      &envelope.Address{Twin: alice.num, Connection: &sid},
		Destination: &envelope.Address{Twin: bob.num},
		Message:     &envelope.Envelope_Request{Request: &envelope.Request{Command: "raw.hello"}},
		Payload:     &envelope.Envelope_Plain{Plain: []byte("hi bob")},
	}
	req.Signature = rawSign(alice.key, rawChallenge(req))
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatal(err)
	}
	_, got, err := cb.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var in envelope.Envelope
	if err := proto.Unmarshal(got, &in); err != nil {
		t.Fatal(err)
	}
	if in.GetRequest().GetCommand() != "raw.hello" || string(in.GetPlain()) != "hi bob" ||
		!ed25519.Verify(alice.key.Public().(ed25519.PublicKey), rawChallenge(&in), in.Signature[1:]) {
		t.Fatalf("bob got %v", &in)
	}

	// Bob answers to alice's session.
	resp := &envelope.Envelope{
		Uid:         in.Uid,
		Timestamp:   uint64(time.Now().Unix()),
		Expiration:  60,
		Source:      &envelope.Address{Twin: bob.num},
		Destination: in.Source,
		Message:     &envelope.Envelope_Response{Response: &envelope.Response{}},
		Payload:     &envelope.Envelope_Plain{Plain: []byte("hi alice")},
	}
	resp.Signature = rawSign(bob.key, rawChallenge(resp))
	b, _ = proto.Marshal(resp)
	if err := cb.Write(ctx, websocket.MessageBinary, b); err != nil {
		t.Fatal(err)
	}
	_, got, err = ca.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var back envelope.Envelope
	if err := proto.Unmarshal(got, &back); err != nil || string(back.GetPlain()) != "hi alice" || back.GetResponse() == nil {
		t.Fatalf("alice got %v, %v", &back, err)
	}

	// An app-level ping, answered by the relay from twin 0.
	ping := &envelope.Envelope{Uid: "raw-ping", Timestamp: uint64(time.Now().Unix()), Expiration: 60,
		Source: &envelope.Address{Twin: alice.num, Connection: &sid}, Message: &envelope.Envelope_Ping{Ping: &envelope.Ping{}}}
	b, _ = proto.Marshal(ping)
	ca.Write(ctx, websocket.MessageBinary, b)
	_, got, err = ca.Read(ctx)
	var pong envelope.Envelope
	if err != nil || proto.Unmarshal(got, &pong) != nil || pong.GetPong() == nil || pong.Uid != "raw-ping" || pong.GetSource().GetTwin() != 0 {
		t.Fatalf("pong: %v %v", &pong, err)
	}
}
