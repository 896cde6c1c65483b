package redisapi_test

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// The decoders are the peer's: these are the cases it must accept and
// refuse (moved here from pkg/peer with the decoders).

func TestDecodeOutgoingRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr error
		dst     []uint32
	}{
		{"reference", `{"ver":1,"ref":"opt","cmd":"calc.add","exp":300,"dat":"WzEsMl0=","tag":null,"dst":[55,66],"ret":"r","shm":"application/json","now":1700000000}`, nil, []uint32{55, 66}},
		{"go sdk with con", `{"ver":1,"cmd":"c","dat":"","dst":[7],"ret":"r","con":"s1","extra":true}`, nil, []uint32{7}},
		{"single dst", `{"cmd":"c","dat":"","dst":7,"ret":"r"}`, nil, []uint32{7}},
		{"string dst", `{"cmd":"c","dat":"","dst":["7"],"ret":"r"}`, nil, []uint32{7}},
		{"not json", `hello`, redisapi.ErrBadJSON, nil},
		{"no ret", `{"cmd":"c","dat":"","dst":[1]}`, redisapi.ErrBadJSON, nil},
		{"bad base64", `{"cmd":"c","dat":"***","dst":[1],"ret":"r"}`, redisapi.ErrBadMessage, nil},
		{"no cmd", `{"dat":"","dst":[1],"ret":"r"}`, redisapi.ErrBadMessage, nil},
		{"no dst", `{"cmd":"c","dat":"","ret":"r"}`, redisapi.ErrBadMessage, nil},
		{"dst zero", `{"cmd":"c","dat":"","dst":[0],"ret":"r"}`, redisapi.ErrBadMessage, nil},
		{"dst negative", `{"cmd":"c","dat":"","dst":[-1],"ret":"r"}`, redisapi.ErrBadJSON, nil},
		{"exp string", `{"cmd":"c","exp":"x","dst":[1],"ret":"r"}`, redisapi.ErrBadJSON, nil},
		{"exp negative", `{"cmd":"c","exp":-1,"dat":"","dst":[1],"ret":"r"}`, redisapi.ErrBadJSON, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := redisapi.DecodeOutgoingRequest([]byte(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !slices.Equal(r.Destinations, tt.dst) {
				t.Fatalf("dst = %v, want %v", r.Destinations, tt.dst)
			}
			if errors.Is(err, redisapi.ErrBadMessage) && (r == nil || r.ReplyTo == "") {
				t.Fatal("ErrBadMessage without the request")
			}
		})
	}
	r, _ := redisapi.DecodeOutgoingRequest([]byte(`{"cmd":"c","dat":"WzEsMl0=","dst":[1],"ret":"r","exp":30,"tag":"x","con":"s"}`))
	if p, err := r.Payload(); err != nil || string(p) != "[1,2]" || r.Expiration != 30 || *r.Tags != "x" || *r.Session != "s" {
		t.Fatalf("decoded %+v", r)
	}
	// Payload follows a changed Data.
	r.Data = "Mw=="
	if p, err := r.Payload(); err != nil || string(p) != "3" {
		t.Fatalf("payload after a change: %q %v", p, err)
	}
}

func TestDecodeOutgoingResponse(t *testing.T) {
	r, err := redisapi.DecodeOutgoingResponse([]byte(`{"ver":1,"ref":"u","dat":"Mw==","dst":"41","shm":"application/json","now":1700000001,"err":null}`))
	if err != nil || r.Destination != "41" || r.Error != nil {
		t.Fatalf("%+v %v", r, err)
	}
	if p, err := r.Payload(); err != nil || string(p) != "3" {
		t.Fatalf("payload %q %v", p, err)
	}
	r, err = redisapi.DecodeOutgoingResponse([]byte(`{"ref":"u","dat":"","dst":"41:sid","err":{"code":7,"message":"m"}}`))
	if err != nil || r.Error.Code != 7 || r.Error.Message != "m" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{`[]`, `{"ref":"u","dst":"x"}`, `{"dst":"4"}`, `{"ref":"u"}`, `{"ref":"u","dst":"0"}`, `{"ref":"u","dst":"4","dat":"%"}`} {
		if _, err := redisapi.DecodeOutgoingResponse([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestOutgoingRequestJSON pins what the client writes: the same bytes as
// before dst became Twins.
func TestOutgoingRequestJSON(t *testing.T) {
	tag, con := "t", "s"
	b, _ := json.Marshal(redisapi.OutgoingRequest{Version: 1, Ref: "r", Command: "c", Expiration: 30, Data: "Mw==",
		Tags: &tag, Destinations: []uint32{5, 6}, Session: &con, ReplyTo: "q", Schema: "s", Now: 7})
	want := `{"ver":1,"ref":"r","cmd":"c","exp":30,"dat":"Mw==","tag":"t","dst":[5,6],"con":"s","ret":"q","shm":"s","now":7}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(redisapi.OutgoingRequest{})
	want = `{"ver":0,"ref":"","cmd":"","exp":0,"dat":"","tag":null,"dst":null,"ret":"","shm":"","now":0}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(redisapi.OutgoingResponse{Version: 1, Ref: "u", Destination: "41", Error: &redisapi.Error{Code: 1, Message: "m"}})
	want = `{"ver":1,"ref":"u","dat":"","dst":"41","shm":"","now":0,"err":{"code":1,"message":"m"}}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

func TestParseAddress(t *testing.T) {
	for in, want := range map[string]struct {
		twin uint32
		sid  string
	}{"41": {41, ""}, "41:s": {41, "s"}, "41:": {41, ""}, "0": {0, ""}, "7:a:b": {7, "a:b"}} {
		twin, sid, err := redisapi.ParseAddress(in)
		if err != nil || twin != want.twin || sid != want.sid {
			t.Errorf("ParseAddress(%q) = %d, %q, %v", in, twin, sid, err)
		}
	}
	for _, in := range []string{"", "x", ":s", "-1", "4294967296", " 1"} {
		if _, _, err := redisapi.ParseAddress(in); err == nil {
			t.Errorf("ParseAddress(%q) accepted", in)
		}
	}
}

// FuzzDecodeOutgoingRequest checks that no queue message makes the
// decoders panic and that accepted messages are consistent.
func FuzzDecodeOutgoingRequest(f *testing.F) {
	for _, s := range []string{
		`{"ver":1,"ref":"opt","cmd":"calc.add","exp":300,"dat":"WzEsMl0=","tag":null,"dst":[55,66],"ret":"r","shm":"application/json","now":1700000000}`,
		`{"cmd":"c","dat":"","dst":7,"ret":"r","con":"s"}`,
		`{"cmd":"c","dat":"","dst":["7"],"ret":"r"}`,
		`{"ref":"u","dat":"Mw==","dst":"41","err":{"code":1,"message":"m"}}`,
		`garbage`, `{}`, `null`, `{"dst":[4294967296]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := redisapi.DecodeOutgoingRequest(b)
		if err == nil {
			if r.ReplyTo == "" || r.Command == "" || len(r.Destinations) == 0 || len(r.Destinations) > redisapi.MaxDestinations || r.Expiration < 0 {
				t.Fatalf("accepted an invalid request %+v", r)
			}
			for _, d := range r.Destinations {
				if d == 0 {
					t.Fatal("accepted twin 0")
				}
			}
			if _, err := r.Payload(); err != nil {
				t.Fatalf("accepted a request whose payload does not decode: %v", err)
			}
		} else if !errors.Is(err, redisapi.ErrBadJSON) && !errors.Is(err, redisapi.ErrBadMessage) {
			t.Fatalf("unexpected error %v", err)
		}
		rep, err := redisapi.DecodeOutgoingResponse(b)
		if err == nil {
			twin, _, perr := redisapi.ParseAddress(rep.Destination)
			if perr != nil || twin == 0 || rep.Ref == "" {
				t.Fatalf("accepted an invalid response %+v", rep)
			}
			if _, err := rep.Payload(); err != nil {
				t.Fatalf("accepted a response whose payload does not decode: %v", err)
			}
		}
	})
}
