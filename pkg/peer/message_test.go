package peer

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

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
		{"not json", `hello`, ErrBadJSON, nil},
		{"no ret", `{"cmd":"c","dat":"","dst":[1]}`, ErrBadJSON, nil},
		{"bad base64", `{"cmd":"c","dat":"***","dst":[1],"ret":"r"}`, ErrBadMessage, nil},
		{"no cmd", `{"dat":"","dst":[1],"ret":"r"}`, ErrBadMessage, nil},
		{"no dst", `{"cmd":"c","dat":"","ret":"r"}`, ErrBadMessage, nil},
		{"dst zero", `{"cmd":"c","dat":"","dst":[0],"ret":"r"}`, ErrBadMessage, nil},
		{"dst negative", `{"cmd":"c","dat":"","dst":[-1],"ret":"r"}`, ErrBadJSON, nil},
		{"exp string", `{"cmd":"c","exp":"x","dst":[1],"ret":"r"}`, ErrBadJSON, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := DecodeOutgoingRequest([]byte(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !equalTwins(r.Dst, tt.dst) {
				t.Fatalf("dst = %v, want %v", r.Dst, tt.dst)
			}
			if errors.Is(err, ErrBadMessage) && (r == nil || r.Ret == "") {
				t.Fatal("ErrBadMessage without the request")
			}
		})
	}
	r, _ := DecodeOutgoingRequest([]byte(`{"cmd":"c","dat":"WzEsMl0=","dst":[1],"ret":"r","exp":30,"tag":"x","con":"s"}`))
	if string(r.payload) != "[1,2]" || r.Expiration != 30 || *r.Tags != "x" || *r.Session != "s" {
		t.Fatalf("decoded %+v", r)
	}
}

func equalTwins(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDecodeOutgoingResponse(t *testing.T) {
	r, err := DecodeOutgoingResponse([]byte(`{"ver":1,"ref":"u","dat":"Mw==","dst":"41","shm":"application/json","now":1700000001,"err":null}`))
	if err != nil || string(r.payload) != "3" || r.Dst != "41" || r.Error != nil {
		t.Fatalf("%+v %v", r, err)
	}
	r, err = DecodeOutgoingResponse([]byte(`{"ref":"u","dat":"","dst":"41:sid","err":{"code":7,"message":"m"}}`))
	if err != nil || r.Error.Code != 7 || r.Error.Message != "m" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{`[]`, `{"ref":"u","dst":"x"}`, `{"dst":"4"}`, `{"ref":"u"}`, `{"ref":"u","dst":"0"}`, `{"ref":"u","dst":"4","dat":"%"}`} {
		if _, err := DecodeOutgoingResponse([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestIncomingJSONFieldNames(t *testing.T) {
	tag := "t"
	b, _ := json.Marshal(&IncomingRequest{Version: 1, Ref: "u", Source: "41", Command: "c", Expiration: 300, Data: "", Tags: &tag, Ret: ReplyQueue, Schema: "s", Now: 5})
	want := `{"ver":1,"ref":"u","src":"41","cmd":"c","exp":300,"dat":"","tag":"t","ret":"msgbus.system.reply","shm":"s","now":5}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(&IncomingResponse{Version: 1, Ref: "r", Data: "Mw==", Source: "55", Now: 1})
	want = `{"ver":1,"ref":"r","dat":"Mw==","src":"55","shm":"","now":1,"err":null}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
}

// FuzzDecodeOutgoingRequest checks that no queue message makes the
// decoder panic and that accepted messages are consistent.
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
		r, err := DecodeOutgoingRequest(b)
		if err == nil {
			if r.Ret == "" || r.Command == "" || len(r.Dst) == 0 || len(r.Dst) > MaxDestinations {
				t.Fatalf("accepted an invalid request %+v", r)
			}
			for _, d := range r.Dst {
				if d == 0 {
					t.Fatal("accepted twin 0")
				}
			}
		} else if !errors.Is(err, ErrBadJSON) && !errors.Is(err, ErrBadMessage) {
			t.Fatalf("unexpected error %v", err)
		}
		rep, err := DecodeOutgoingResponse(b)
		if err == nil {
			a, perr := parseAddress(rep.Dst)
			if perr != nil || a.twin == 0 || rep.Ref == "" {
				t.Fatalf("accepted an invalid response %+v", rep)
			}
			if !bytes.Equal(rep.payload, rep.payload) {
				t.Fatal("unreachable")
			}
		}
	})
}
