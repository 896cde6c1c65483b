package redisapi

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// dat256 is the payload of a typical message: 256 bytes in base64.
var dat256 = func() string {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return base64.StdEncoding.EncodeToString(b)
}()

// Typical messages, as the SDKs and the peer write them.
var (
	typicalOutgoingRequest  = `{"ver":1,"ref":"5b0cd5b5-4f1a-4d6e-9a57-3b1d7c0e2f11","cmd":"calc.add","exp":300,"dat":"` + dat256 + `","tag":null,"dst":[55,66],"ret":"msgbus.reply.5b0cd5b5-4f1a-4d6e-9a57-3b1d7c0e2f11","shm":"application/json","now":1700000000}`
	typicalIncomingRequest  = `{"ver":1,"ref":"5b0cd5b5-4f1a-4d6e-9a57-3b1d7c0e2f11","src":"41","cmd":"calc.add","exp":300,"dat":"` + dat256 + `","tag":null,"ret":"msgbus.system.reply","shm":"application/json","now":1700000000}`
	typicalOutgoingResponse = `{"ver":1,"ref":"5b0cd5b5-4f1a-4d6e-9a57-3b1d7c0e2f11","dat":"` + dat256 + `","dst":"41","shm":"application/json","now":1700000001,"err":null}`
	typicalIncomingResponse = `{"ver":1,"ref":"5b0cd5b5-4f1a-4d6e-9a57-3b1d7c0e2f11","dat":"` + dat256 + `","src":"55","shm":"application/json","now":1700000001,"err":null}`
)

// usual are messages the fast path must take, for every type (keys of
// the other types are tried too: the scan gives up on them).
var usual = []string{
	typicalOutgoingRequest, typicalIncomingRequest, typicalOutgoingResponse, typicalIncomingResponse,
	`{"ver":1,"ref":"r","cmd":"c","exp":30,"dat":"Mw==","tag":"t","dst":[5,6],"con":"s","ret":"q","shm":"s","now":7}`,
	`{"ver":0,"ref":"","cmd":"","exp":0,"dat":"","tag":null,"dst":null,"ret":"","shm":"","now":0}`,
	`{"ver":1,"ref":"u","dat":"","dst":"41:sid","shm":"","now":0,"err":{"code":7,"message":"m"}}`,
	`{"ver":1,"ref":"u","dat":"","src":"41","shm":"","now":0,"err":{"code":4294967295,"message":"héllo ✓ 😀"}}`,
	` { "ver" : 1 ,` + "\n\t\r" + `"ref":"x" , "dst" : [ 1 , 2 ] , "err" : { } , "now" : -0 } ` + "\n",
	`{"dst":[],"exp":-5,"now":-999999999999999999,"tag":"","con":""}`,
	`{}`,
}

// seeds are what the fuzz targets start from: the usual messages and the
// unusual ones the fast path must leave to encoding/json.
var seeds = append([]string{
	// strings
	`{"ref":"\u00e9","dat":"a\"b"}`, `{"ref":"a\\b"}`, `{"ref":"a\nb"}`, "{\"ref\":\"a\tb\"}",
	"{\"ref\":\"\xff\"}", "{\"ref\":\"\xed\xa0\x80\"}", "{\"ref\":\"\x7f\"}", `{"ref":"<&>"}`,
	`{"ref":"`, `{"ref":"x`, `{"ref":1}`, `{"ref":true}`, `{"ref":null}`, `{"ref":nul}`, `{"ref":nullx}`,
	// keys
	`{"ver":1,"extra":true}`, `{"REF":"x"}`, `{"Ver":1}`, `{"ref":"a","ref":"b"}`, `{"r\u0065f":"x"}`,
	`{"ver":1,}`, `{,}`, `{"ver"}`, `{"ver":}`, `{"ver" 1}`, `{1:1}`,
	// numbers
	`{"ver":1.0}`, `{"ver":1e3}`, `{"ver":1E3}`, `{"ver":-0}`, `{"ver":01}`, `{"ver":-}`, `{"ver":+1}`,
	`{"ver":"1"}`, `{"ver":null}`, `{"ver":true}`,
	`{"now":999999999999999999}`, `{"now":1000000000000000000}`, `{"now":-9223372036854775808}`,
	`{"now":99999999999999999999}`, `{"now":9227000000000000000}`, `{"exp":-1}`, `{"exp":-0}`, `{"exp":18446744073709551615}`,
	// tag and con
	`{"tag":"x","con":"s"}`, `{"tag":1}`, `{"con":null}`, `{"tag":{}}`,
	// dst
	`{"dst":7}`, `{"dst":"7"}`, `{"dst":["7"]}`, `{"dst":[1, 2 ,3]}`, `{"dst":[null]}`, `{"dst":[1.0]}`,
	`{"dst":[-1]}`, `{"dst":[4294967295]}`, `{"dst":[4294967296]}`, `{"dst":[01]}`, `{"dst":{}}`,
	`{"dst":[1,]}`, `{"dst":[,1]}`, `{"dst":[1 2]}`, `{"dst":"41"}`, `{"dst":null}`, `{"dst":[]}`,
	// err
	`{"err":{}}`, `{"err":{"code":1}}`, `{"err":{"code":"1"}}`, `{"err":{"code":-1}}`, `{"err":{"Code":1}}`,
	`{"err":{"code":1,"code":2}}`, `{"err":{"code":4294967296}}`, `{"err":{"message":null,"code":null}}`,
	`{"err":[]}`, `{"err":1}`, `{"err":"x"}`, `{"err":{"code":1,"message":"m","x":0}}`,
	// the whole
	`null`, `[]`, `""`, ``, `{`, `}`, `true`, ` `, `{"ver":1}x`, `{"ver":1}{}`, `{"ver":1} null`,
	"\xef\xbb\xbf{}",
}, usual...)

// checkParse checks that unmarshal gives what json.Unmarshal does: the
// same struct, even half-filled, and the same error.
func checkParse[T any, P interface {
	*T
	scan(b []byte, shared bool) bool
}](t *testing.T, b []byte) {
	t.Helper()
	var want, got T
	werr := json.Unmarshal(b, &want)
	gerr := unmarshal(b, P(&got))
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("%q: error %v, encoding/json %v", b, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %+v\nwant %+v", b, got, want)
	}
	// The same from a string, whose strings the result shares.
	var fromString T
	serr := unmarshalString(string(b), P(&fromString))
	if (werr == nil) != (serr == nil) || werr != nil && werr.Error() != serr.Error() {
		t.Fatalf("%q: error from a string %v, encoding/json %v", b, serr, werr)
	}
	if !reflect.DeepEqual(fromString, want) {
		t.Fatalf("%q from a string:\n got %+v\nwant %+v", b, fromString, want)
	}
}

// sameResult checks two results of a decoder, the payload cache included.
func sameResult[T any](t *testing.T, b []byte, got, want *T, gerr, werr error, payload func(*T) ([]byte, error)) {
	t.Helper()
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("%q: error %v, with encoding/json %v", b, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %+v\nwant %+v", b, got, want)
	}
	if got != nil {
		gp, gerr := payload(got)
		wp, werr := payload(want)
		if !bytes.Equal(gp, wp) || (gerr == nil) != (werr == nil) {
			t.Fatalf("%q: payload %q %v, with encoding/json %q %v", b, gp, gerr, wp, werr)
		}
	}
}

func jsonUnmarshal[T any](b []byte, r *T) error { return json.Unmarshal(b, r) }

func addSeeds(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}

func FuzzParseOutgoingRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParse[OutgoingRequest](t, b)
		got, gerr := DecodeOutgoingRequest(b)
		want, werr := decodeOutgoingRequest(b, jsonUnmarshal[OutgoingRequest])
		sameResult(t, b, got, want, gerr, werr, (*OutgoingRequest).Payload)
		got, gerr = DecodeOutgoingRequestString(string(b))
		sameResult(t, b, got, want, gerr, werr, (*OutgoingRequest).Payload)
	})
}

// checkIncoming compares parse with json.Unmarshal into a new T (nil on
// error), as ParseIncomingRequest and ParseIncomingResponse promise.
func checkIncoming[T any, P interface {
	*T
	scan(b []byte, shared bool) bool
}](t *testing.T, b []byte, parse func([]byte) (*T, error), parseString func(string) (*T, error), payload func(*T) ([]byte, error)) {
	t.Helper()
	checkParse[T, P](t, b)
	got, gerr := parse(b)
	want := new(T)
	werr := json.Unmarshal(b, want)
	if werr != nil {
		want = nil
	}
	sameResult(t, b, got, want, gerr, werr, payload)
	got, gerr = parseString(string(b))
	sameResult(t, b, got, want, gerr, werr, payload)
}

func FuzzParseIncomingRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkIncoming[IncomingRequest](t, b, ParseIncomingRequest, ParseIncomingRequestString, (*IncomingRequest).Payload)
	})
}

func FuzzParseOutgoingResponse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParse[OutgoingResponse](t, b)
		got, gerr := DecodeOutgoingResponse(b)
		want, werr := decodeOutgoingResponse(b, jsonUnmarshal[OutgoingResponse])
		sameResult(t, b, got, want, gerr, werr, (*OutgoingResponse).Payload)
		got, gerr = DecodeOutgoingResponseString(string(b))
		sameResult(t, b, got, want, gerr, werr, (*OutgoingResponse).Payload)
	})
}

func FuzzParseIncomingResponse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkIncoming[IncomingResponse](t, b, ParseIncomingResponse, ParseIncomingResponseString, (*IncomingResponse).Payload)
	})
}

// fields makes the four messages of fuzzed values. The bits of flags
// choose the pointers: tag, con, err, and dst not nil.
func fields(ver int, exp, now int64, code uint32, a, b, c string, dst []byte, flags uint8) []any {
	var tag, con *string
	var e *Error
	var twins Twins
	if flags&1 != 0 {
		tag = &b
	}
	if flags&2 != 0 {
		con = &a
	}
	if flags&4 != 0 {
		e = &Error{Code: code, Message: c}
	}
	if flags&8 != 0 {
		twins = Twins{}
		for ; len(dst) >= 4; dst = dst[4:] {
			twins = append(twins, binary.LittleEndian.Uint32(dst))
		}
	}
	return []any{
		&OutgoingRequest{Version: ver, Ref: a, Command: b, Expiration: exp, Data: c, Tags: tag,
			Destinations: twins, Session: con, ReplyTo: b + c, Schema: a, Now: now},
		&IncomingRequest{Version: ver, Ref: a, Source: b, Command: c, Expiration: uint64(exp), Data: c,
			Tags: tag, ReplyTo: a, Schema: b, Now: now},
		&OutgoingResponse{Version: ver, Ref: a, Data: b, Destination: c, Schema: a, Now: now, Error: e},
		&IncomingResponse{Version: ver, Ref: c, Data: b, Source: a, Schema: c, Now: now, Error: e},
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add(1, int64(300), int64(1700000000), uint32(0), "ref", "calc.add", dat256, []byte{55, 0, 0, 0, 66, 0, 0, 0}, uint8(8))
	f.Add(-1, int64(-1), int64(-1), uint32(1<<32-1), "", "", "", []byte(nil), uint8(15))
	f.Add(0, int64(0), int64(0), uint32(500), "héllo", "a\"b\\c", "<&>\n\x00\x7f\xff\u2028", []byte{}, uint8(14))
	f.Add(1<<62, int64(-1<<63), int64(1<<63-1), uint32(7), "s", "t", "~ !#$%'()*+,-./:;=?@[]^_`{|}", []byte{1, 2, 3}, uint8(255))
	f.Fuzz(func(t *testing.T, ver int, exp, now int64, code uint32, a, b, c string, dst []byte, flags uint8) {
		type appender interface{ AppendJSON([]byte) []byte }
		for _, m := range fields(ver, exp, now, code, a, b, c, dst, flags) {
			want, err := json.Marshal(peerForm(m))
			if err != nil {
				t.Fatal(err)
			}
			if got := m.(appender).AppendJSON(nil); !bytes.Equal(got, want) {
				t.Fatalf("%T:\n got %s\nwant %s", m, got, want)
			}
			if got := m.(appender).AppendJSON([]byte("x")); string(got) != "x"+string(want) {
				t.Fatalf("%T after x:\n got %s\nwant x%s", m, got, want)
			}
		}
	})
}

// peerForm is m as json.Marshal should write it: as it is, but in the
// messages the peer writes (IncomingRequest, IncomingResponse) an empty
// ref or shm is null, as the Rust peer writes an absent one.
func peerForm(m any) any {
	null := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	switch r := m.(type) {
	case *IncomingRequest:
		return struct {
			Version    int     `json:"ver"`
			Ref        *string `json:"ref"`
			Source     string  `json:"src"`
			Command    string  `json:"cmd"`
			Expiration uint64  `json:"exp"`
			Data       string  `json:"dat"`
			Tags       *string `json:"tag"`
			ReplyTo    string  `json:"ret"`
			Schema     *string `json:"shm"`
			Now        int64   `json:"now"`
		}{r.Version, null(r.Ref), r.Source, r.Command, r.Expiration, r.Data, r.Tags, r.ReplyTo, null(r.Schema), r.Now}
	case *IncomingResponse:
		return struct {
			Version int     `json:"ver"`
			Ref     *string `json:"ref"`
			Data    string  `json:"dat"`
			Source  string  `json:"src"`
			Schema  *string `json:"shm"`
			Now     int64   `json:"now"`
			Error   *Error  `json:"err"`
		}{r.Version, null(r.Ref), r.Data, r.Source, null(r.Schema), r.Now, r.Error}
	}
	return m
}

// TestPeerWritesNulls fixes the bytes of what the peer writes without a
// ref or a schema: null, as the Rust peer writes an absent Option (its
// serde_json output for these structs, field for field). The Go SDK's
// types and ours read them back as empty strings.
func TestPeerWritesNulls(t *testing.T) {
	for _, tt := range []struct {
		m    interface{ AppendJSON([]byte) []byte }
		want string
	}{
		{&IncomingRequest{Version: 1, Ref: "5b0cd5b5", Source: "41", Command: "calc.add", Expiration: 300, Data: "Mw==", ReplyTo: QueueReply, Now: 1700000000},
			`{"ver":1,"ref":"5b0cd5b5","src":"41","cmd":"calc.add","exp":300,"dat":"Mw==","tag":null,"ret":"msgbus.system.reply","shm":null,"now":1700000000}`},
		{&IncomingResponse{Version: 1, Data: "Mw==", Source: "55", Now: 1700000001},
			`{"ver":1,"ref":null,"dat":"Mw==","src":"55","shm":null,"now":1700000001,"err":null}`},
		{&IncomingResponse{Version: 1, Source: "0", Now: 1700000001, Error: &Error{Code: 408, Message: "a \"b\""}},
			`{"ver":1,"ref":null,"dat":"","src":"0","shm":null,"now":1700000001,"err":{"code":408,"message":"a \"b\""}}`},
		{&IncomingResponse{Version: 1, Ref: "r", Data: "Mw==", Source: "55", Schema: "application/json", Now: 1700000001},
			`{"ver":1,"ref":"r","dat":"Mw==","src":"55","shm":"application/json","now":1700000001,"err":null}`},
		// What clients write is unchanged: the Rust peer reads "" and null alike.
		{&OutgoingResponse{Version: 1, Ref: "u", Destination: "41", Now: 1},
			`{"ver":1,"ref":"u","dat":"","dst":"41","shm":"","now":1,"err":null}`},
	} {
		got := string(tt.m.AppendJSON(nil))
		if got != tt.want {
			t.Errorf("%T:\n got %s\nwant %s", tt.m, got, tt.want)
		}
		// The Go SDK's types (rmb-sdk-go: plain strings, *string for shm)
		// and ours decode it.
		var sdk struct {
			Ref    string  `json:"ref"`
			Schema *string `json:"shm"`
			Source string  `json:"src"`
		}
		if err := json.Unmarshal([]byte(got), &sdk); err != nil {
			t.Errorf("%s: %v", got, err)
		}
		switch m := tt.m.(type) {
		case *IncomingRequest:
			if r, err := ParseIncomingRequestString(got); err != nil || *r != *m {
				t.Errorf("%s read back as %+v, %v", got, r, err)
			}
		case *IncomingResponse:
			if r, err := ParseIncomingResponseString(got); err != nil || !reflect.DeepEqual(r, m) {
				t.Errorf("%s read back as %+v, %v", got, r, err)
			}
		}
	}
}

func TestAppendJSONNil(t *testing.T) {
	for _, m := range []interface{ AppendJSON([]byte) []byte }{
		(*OutgoingRequest)(nil), (*IncomingRequest)(nil), (*OutgoingResponse)(nil), (*IncomingResponse)(nil),
	} {
		want, _ := json.Marshal(m)
		if got := m.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("%T: got %s, want %s", m, got, want)
		}
	}
}

// TestFastPath checks that the usual messages take the fast path, so that
// a fast path that always falls back fails.
func TestFastPath(t *testing.T) {
	types := []reflect.Type{
		reflect.TypeFor[OutgoingRequest](), reflect.TypeFor[IncomingRequest](),
		reflect.TypeFor[OutgoingResponse](), reflect.TypeFor[IncomingResponse](),
	}
	for _, s := range usual {
		b := []byte(s)
		var keys map[string]json.RawMessage
		if err := json.Unmarshal(b, &keys); err != nil {
			t.Fatal(err)
		}
		for _, typ := range types {
			// Taken when encoding/json accepts the message and its keys
			// are all of the type.
			want := json.Unmarshal(b, reflect.New(typ).Interface()) == nil
			for k := range keys {
				want = want && hasTag(typ, k)
			}
			r := reflect.New(typ).Interface().(interface {
				scan(b []byte, shared bool) bool
			})
			if taken := r.scan(b, false); taken != want {
				t.Errorf("%v %s: fast path taken %v, want %v", typ, s, taken, want)
			}
		}
	}
	// Parsing allocates only the results: the struct, its non-empty
	// strings, dst. encoding/json allocates more.
	for _, tt := range []struct {
		msg   string
		parse func([]byte)
		want  float64
	}{
		{typicalOutgoingRequest, func(b []byte) { unmarshal(b, new(OutgoingRequest)) }, 1 + 5 + 1},
		{typicalIncomingRequest, func(b []byte) { ParseIncomingRequest(b) }, 1 + 6},
		{typicalOutgoingResponse, func(b []byte) { unmarshal(b, new(OutgoingResponse)) }, 1 + 4},
		{typicalIncomingResponse, func(b []byte) { ParseIncomingResponse(b) }, 1 + 4},
	} {
		b := []byte(tt.msg)
		if n := testing.AllocsPerRun(10, func() { tt.parse(b) }); n != tt.want {
			t.Errorf("%.40s...: %v allocations, want %v", tt.msg, n, tt.want)
		}
	}
	// From a string, the strings are not copied: only the struct and dst.
	for _, tt := range []struct {
		msg   string
		parse func(string)
		want  float64
	}{
		{typicalOutgoingRequest, func(s string) { unmarshalString(s, new(OutgoingRequest)) }, 1 + 1},
		{typicalIncomingRequest, func(s string) { ParseIncomingRequestString(s) }, 1},
		{typicalOutgoingResponse, func(s string) { unmarshalString(s, new(OutgoingResponse)) }, 1},
		{typicalIncomingResponse, func(s string) { ParseIncomingResponseString(s) }, 1},
	} {
		if n := testing.AllocsPerRun(10, func() { tt.parse(tt.msg) }); n != tt.want {
			t.Errorf("%.40s... from a string: %v allocations, want %v", tt.msg, n, tt.want)
		}
	}
}

// TestSpecial checks the word-at-a-time test of the scanner against a
// byte-at-a-time one, for every byte at every place among plain ones.
func TestSpecial(t *testing.T) {
	for c := range 256 {
		want := c < 0x20 || c == '"' || c == '\\' || c >= 0x80
		for i := range 8 {
			for _, fill := range []byte{' ', '!', '#', 'A', '~', 0x7f} {
				w := bytes.Repeat([]byte{fill}, 8)
				w[i] = byte(c)
				if got := special(binary.LittleEndian.Uint64(w)); got != want {
					t.Fatalf("special(%q) = %v", w, got)
				}
			}
		}
	}
	w := make([]byte, 8)
	for range 100000 {
		for i := range w {
			w[i] = "\x00\x1f !\"#[\\]~\x7f\x80\xffaZ"[rand.IntN(15)]
		}
		want := bytes.ContainsFunc(w, func(r rune) bool { return r < 0x20 || r == '"' || r == '\\' || r >= 0x80 })
		if got := special(binary.LittleEndian.Uint64(w)); got != want {
			t.Fatalf("special(%q) = %v", w, got)
		}
	}
}

func hasTag(typ reflect.Type, key string) bool {
	for f := range typ.Fields() {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name == key {
			return true
		}
	}
	return false
}

// The benchmarks compare the fast path with encoding/json on typical
// messages with a payload of 256 bytes, and measure writing them (by
// encoding/json).

func benchParse[T any, P interface {
	*T
	scan(b []byte, shared bool) bool
}](b *testing.B, msg string) {
	in := []byte(msg)
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			var r T
			if err := unmarshal(in, P(&r)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			var r T
			if err := json.Unmarshal(in, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkParseOutgoingRequest(b *testing.B) {
	benchParse[OutgoingRequest](b, typicalOutgoingRequest)
}
func BenchmarkParseIncomingRequest(b *testing.B) {
	benchParse[IncomingRequest](b, typicalIncomingRequest)
}
func BenchmarkParseOutgoingResponse(b *testing.B) {
	benchParse[OutgoingResponse](b, typicalOutgoingResponse)
}
func BenchmarkParseIncomingResponse(b *testing.B) {
	benchParse[IncomingResponse](b, typicalIncomingResponse)
}

func benchAppend[T any, P interface {
	*T
	AppendJSON([]byte) []byte
}](b *testing.B, msg string) {
	r := P(new(T))
	if err := json.Unmarshal([]byte(msg), r); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r.AppendJSON(nil)
	}
}

func BenchmarkAppendJSONOutgoingRequest(b *testing.B) {
	benchAppend[OutgoingRequest](b, typicalOutgoingRequest)
}
func BenchmarkAppendJSONIncomingRequest(b *testing.B) {
	benchAppend[IncomingRequest](b, typicalIncomingRequest)
}
func BenchmarkAppendJSONOutgoingResponse(b *testing.B) {
	benchAppend[OutgoingResponse](b, typicalOutgoingResponse)
}
func BenchmarkAppendJSONIncomingResponse(b *testing.B) {
	benchAppend[IncomingResponse](b, typicalIncomingResponse)
}

// TestEncodeData: EncodeData is standard base64, for every length
// remainder and the empty payload.
func TestEncodeData(t *testing.T) {
	b := make([]byte, 70)
	for i := range b {
		b[i] = byte(i*37 + 11)
	}
	for n := range len(b) + 1 {
		if got, want := EncodeData(b[:n]), base64.StdEncoding.EncodeToString(b[:n]); got != want {
			t.Fatalf("%d bytes: %q, want %q", n, got, want)
		}
	}
}
