// The JSON of the four queue messages: written by encoding/json, read by
// a scanner of our own that hands anything unusual to encoding/json.
//
// Why a scanner of our own remains (issue 17, docs/benchmarks.md "Queue
// JSON: libraries against ours"): every message the peer pops is parsed
// here, and encoding/json costs about five times as much CPU and four
// times the allocations on these small flat messages. goccy/go-json and
// segmentio/encoding were measured in the same run: no cheaper than this
// scanner, and their results and error texts are not encoding/json's
// (the peer sends decode errors back to clients and dead-letters them, so
// the texts are part of what it writes) - a library there would still
// need encoding/json behind it, as this scanner has. The scanner takes
// only the usual shape (plain strings, small integers, known keys once,
// dst as an array of numbers) and leaves everything else, errors
// included, to encoding/json; so its results are encoding/json's, which
// the fuzz targets (FuzzParse*) check. It also does what no library does:
// strings of a message held in a Go string share its memory.
//
// Writing has no such case: encoding/json costs a few hundred ns more
// than the hand-written writer this file had (goccy and segmentio a few
// hundred less), against ~19 us of signature checking per envelope, so
// the messages are written by the standard library.

package redisapi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// The messages the peer writes, as it writes them: an empty ref or shm is
// absent, and absent is null, as the Rust peer writes them (its ref and
// shm are Option<String>).
type (
	wireIncomingRequest struct {
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
	}
	wireIncomingResponse struct {
		Version int     `json:"ver"`
		Ref     *string `json:"ref"`
		Data    string  `json:"dat"`
		Source  string  `json:"src"`
		Schema  *string `json:"shm"`
		Now     int64   `json:"now"`
		Error   *Error  `json:"err"`
	}
)

// orNull is s, or nil (null) when *s is empty.
func orNull(s *string) *string {
	if *s == "" {
		return nil
	}
	return s
}

// appendJSON appends json.Marshal(v) to b.
func appendJSON(b []byte, v any) []byte {
	out, _ := json.Marshal(v) // cannot fail: strings, numbers and pointers only
	if b == nil {
		return out
	}
	return append(b, out...)
}

// AppendJSON appends json.Marshal(r) to b and returns the extended buffer.
func (r *OutgoingRequest) AppendJSON(b []byte) []byte { return appendJSON(b, r) }

// AppendJSON appends json.Marshal(r) to b and returns the extended buffer.
func (r *OutgoingResponse) AppendJSON(b []byte) []byte { return appendJSON(b, r) }

// AppendJSON appends r as JSON to b and returns the extended buffer: what
// json.Marshal writes, but an empty Ref or Schema is null, as the Rust peer
// writes an absent one.
func (r *IncomingRequest) AppendJSON(b []byte) []byte {
	if r == nil {
		return append(b, "null"...)
	}
	return appendJSON(b, &wireIncomingRequest{Version: r.Version, Ref: orNull(&r.Ref), Source: r.Source,
		Command: r.Command, Expiration: r.Expiration, Data: r.Data, Tags: r.Tags, ReplyTo: r.ReplyTo,
		Schema: orNull(&r.Schema), Now: r.Now})
}

// AppendJSON appends r as JSON to b and returns the extended buffer: what
// json.Marshal writes, but an empty Ref or Schema is null, as the Rust peer
// writes an absent one.
func (r *IncomingResponse) AppendJSON(b []byte) []byte {
	if r == nil {
		return append(b, "null"...)
	}
	return appendJSON(b, &wireIncomingResponse{Version: r.Version, Ref: orNull(&r.Ref), Data: r.Data,
		Source: r.Source, Schema: orNull(&r.Schema), Now: r.Now, Error: r.Error})
}

// ParseIncomingRequest parses a message of a command queue. It gives the
// same request and error as json.Unmarshal, and a nil request on error.
func ParseIncomingRequest(b []byte) (*IncomingRequest, error) {
	r := new(IncomingRequest)
	if err := unmarshal(b, r); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseIncomingRequestString is ParseIncomingRequest of a message held in
// a string, as Redis clients return them; the request's strings share
// msg's memory.
func ParseIncomingRequestString(msg string) (*IncomingRequest, error) {
	r := new(IncomingRequest)
	if err := unmarshalString(msg, r); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseIncomingResponse parses a message of a client's ret queue. It gives
// the same response and error as json.Unmarshal, and a nil response on
// error.
func ParseIncomingResponse(b []byte) (*IncomingResponse, error) {
	r := new(IncomingResponse)
	if err := unmarshal(b, r); err != nil {
		return nil, err
	}
	return r, nil
}

// ParseIncomingResponseString is ParseIncomingResponse of a message held
// in a string, as Redis clients return them; the response's strings share
// msg's memory.
func ParseIncomingResponseString(msg string) (*IncomingResponse, error) {
	r := new(IncomingResponse)
	if err := unmarshalString(msg, r); err != nil {
		return nil, err
	}
	return r, nil
}

// unmarshal is json.Unmarshal(b, r) for a zero *r: the fast scan when b
// has the usual shape, encoding/json when it has not.
func unmarshal[T any, P interface {
	*T
	scan(b []byte, shared bool) bool
}](b []byte, r P) error {
	if r.scan(b, false) {
		return nil
	}
	*r = *new(T) // what the scan left
	return json.Unmarshal(b, r)
}

// unmarshalString is unmarshal of a message held in a string, as Redis
// clients return them. The fast scan makes the strings of r substrings of
// msg instead of copies (a string cannot change, so they can share it):
// a typical message then costs no allocation but r and its dst.
func unmarshalString[T any, P interface {
	*T
	scan(b []byte, shared bool) bool
}](msg string, r P) error {
	b := unsafe.Slice(unsafe.StringData(msg), len(msg)) // read, never written
	if r.scan(b, true) {
		return nil
	}
	*r = *new(T)
	return json.Unmarshal(b, r)
}

// The keys of each message, as in their json tags. A key matches only
// when equal: encoding/json also folds case, the scans leave that to it.
var (
	outgoingRequestKeys  = []string{"ver", "ref", "cmd", "exp", "dat", "tag", "dst", "con", "ret", "shm", "now"}
	incomingRequestKeys  = []string{"ver", "ref", "src", "cmd", "exp", "dat", "tag", "ret", "shm", "now"}
	outgoingResponseKeys = []string{"ver", "ref", "dat", "dst", "shm", "now", "err"}
	incomingResponseKeys = []string{"ver", "ref", "dat", "src", "shm", "now", "err"}
	errorKeys            = []string{"code", "message"}
)

// scan fills a zero r from b if b is an object of the usual shape and
// reports whether it was; if not, r is left half-filled. shared: b is
// the memory of a string (scanner).
func (r *OutgoingRequest) scan(b []byte, shared bool) bool {
	s := scanner{b: b, shared: shared}
	return s.object(outgoingRequestKeys, func(key string) (ok bool) {
		var n int64
		switch key {
		case "ver":
			n, ok = s.int(strconv.IntSize)
			r.Version = int(n)
		case "ref":
			r.Ref, ok = s.str()
		case "cmd":
			r.Command, ok = s.str()
		case "exp":
			r.Expiration, ok = s.int(64)
		case "dat":
			r.Data, ok = s.str()
		case "tag":
			r.Tags, ok = s.strPtr()
		case "dst":
			r.Destinations, ok = s.twins()
		case "con":
			r.Session, ok = s.strPtr()
		case "ret":
			r.ReplyTo, ok = s.str()
		case "shm":
			r.Schema, ok = s.str()
		case "now":
			r.Now, ok = s.int(64)
		}
		return ok
	}) && s.end()
}

// scan fills a zero r from b if b is an object of the usual shape and
// reports whether it was; if not, r is left half-filled. shared: b is
// the memory of a string (scanner).
func (r *IncomingRequest) scan(b []byte, shared bool) bool {
	s := scanner{b: b, shared: shared}
	return s.object(incomingRequestKeys, func(key string) (ok bool) {
		var n int64
		switch key {
		case "ver":
			n, ok = s.int(strconv.IntSize)
			r.Version = int(n)
		case "ref":
			r.Ref, ok = s.str()
		case "src":
			r.Source, ok = s.str()
		case "cmd":
			r.Command, ok = s.str()
		case "exp":
			r.Expiration, ok = s.uint(64)
		case "dat":
			r.Data, ok = s.str()
		case "tag":
			r.Tags, ok = s.strPtr()
		case "ret":
			r.ReplyTo, ok = s.str()
		case "shm":
			r.Schema, ok = s.str()
		case "now":
			r.Now, ok = s.int(64)
		}
		return ok
	}) && s.end()
}

// scan fills a zero r from b if b is an object of the usual shape and
// reports whether it was; if not, r is left half-filled. shared: b is
// the memory of a string (scanner).
func (r *OutgoingResponse) scan(b []byte, shared bool) bool {
	s := scanner{b: b, shared: shared}
	return s.object(outgoingResponseKeys, func(key string) (ok bool) {
		var n int64
		switch key {
		case "ver":
			n, ok = s.int(strconv.IntSize)
			r.Version = int(n)
		case "ref":
			r.Ref, ok = s.str()
		case "dat":
			r.Data, ok = s.str()
		case "dst":
			r.Destination, ok = s.str()
		case "shm":
			r.Schema, ok = s.str()
		case "now":
			r.Now, ok = s.int(64)
		case "err":
			r.Error, ok = s.error()
		}
		return ok
	}) && s.end()
}

// scan fills a zero r from b if b is an object of the usual shape and
// reports whether it was; if not, r is left half-filled. shared: b is
// the memory of a string (scanner).
func (r *IncomingResponse) scan(b []byte, shared bool) bool {
	s := scanner{b: b, shared: shared}
	return s.object(incomingResponseKeys, func(key string) (ok bool) {
		var n int64
		switch key {
		case "ver":
			n, ok = s.int(strconv.IntSize)
			r.Version = int(n)
		case "ref":
			r.Ref, ok = s.str()
		case "dat":
			r.Data, ok = s.str()
		case "src":
			r.Source, ok = s.str()
		case "shm":
			r.Schema, ok = s.str()
		case "now":
			r.Now, ok = s.int(64)
		case "err":
			r.Error, ok = s.error()
		}
		return ok
	}) && s.end()
}

// scanner reads the simple JSON of the messages. Its methods report false
// for anything they do not accept, and the whole message then goes to
// encoding/json; they need not say why, nor stop at the exact spot.
type scanner struct {
	b []byte
	i int // the next byte
	// shared: b is the memory of a string, so str may return substrings
	// of it; otherwise it copies (the caller may reuse b).
	shared bool
}

// next skips whitespace and returns the next byte, 0 at the end.
func (s *scanner) next() byte {
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.next()
	return s.i == len(s.b)
}

// object reads an object whose keys are among keys, each at most once.
// For each key it calls value, which reads the value, unless the value is
// null: null leaves a field of a zero struct as it is, in every field of
// the messages (Twins.UnmarshalJSON too sets nil).
func (s *scanner) object(keys []string, value func(key string) bool) bool {
	if s.next() != '{' {
		return false
	}
	s.i++
	if s.next() == '}' {
		s.i++
		return true
	}
	var seen uint64
	k := -1
	for {
		k = s.key(keys, k+1)
		if k < 0 || seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		if s.next() != ':' {
			return false
		}
		s.i++
		if !s.null() && !value(keys[k]) {
			return false
		}
		switch s.next() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// key reads a key and returns its index in keys, -1 if not there. Keys
// usually come in order: it looks from keys[from] on, then wraps around.
func (s *scanner) key(keys []string, from int) int {
	raw, ok := s.raw()
	if !ok {
		return -1
	}
	for j := range keys {
		if k := (from + j) % len(keys); keys[k] == string(raw) {
			return k
		}
	}
	return -1
}

// null reads a null if there is one.
func (s *scanner) null() bool {
	if s.next() == 'n' && bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += 4
		return true
	}
	return false
}

// raw reads a string without escapes or control characters and returns
// its content, which is valid UTF-8 (encoding/json would replace invalid
// bytes). It aliases s.b.
func (s *scanner) raw() ([]byte, bool) {
	if s.next() != '"' {
		return nil, false
	}
	start := s.i + 1
	i := start
	for i+8 <= len(s.b) && !special(binary.LittleEndian.Uint64(s.b[i:])) {
		i += 8
	}
	for ; i < len(s.b); i++ {
		switch c := s.b[i]; {
		case c == '"':
			s.i = i + 1
			return s.b[start:i], utf8.Valid(s.b[start:i])
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// special reports whether one of the 8 bytes of w is not ASCII, or is a
// control character, a quote or a backslash.
func special(w uint64) bool {
	return (w|below(w, 0x20)|equal(w, '"')|equal(w, '\\'))&top != 0
}

// Tests of the 8 bytes of a word at once, for words of ASCII bytes (top
// bits clear): below leaves top bits set if and only if some byte is below
// n, equal if some byte is c. Subtracting n from each byte sets the top bit
// of a byte that borrows, and the lowest one to borrow is below n.
const ones, top = 0x0101010101010101, 0x8080808080808080

func below(w uint64, n byte) uint64 { return w - uint64(n)*ones }
func equal(w uint64, c byte) uint64 { return below(w^uint64(c)*ones, 1) }

func (s *scanner) str() (string, bool) {
	raw, ok := s.raw()
	if s.shared && len(raw) > 0 {
		return unsafe.String(&raw[0], len(raw)), ok
	}
	return string(raw), ok
}

func (s *scanner) strPtr() (*string, bool) {
	v, ok := s.str()
	return &v, ok
}

// digits reads 0|[1-9][0-9]* of at most 18 digits, so that it fits an
// int64, and not followed by a fraction or an exponent.
func (s *scanner) digits() (uint64, bool) {
	start := s.i
	var n uint64
	for ; s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9'; s.i++ {
		n = n*10 + uint64(s.b[s.i]-'0')
	}
	switch d := s.i - start; {
	case d == 0 || d > 18 || d > 1 && s.b[start] == '0':
		return 0, false
	case s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E'):
		return 0, false
	}
	return n, true
}

// int reads an integer that fits in a signed integer of the given size.
func (s *scanner) int(bits int) (int64, bool) {
	neg := s.next() == '-'
	if neg {
		s.i++
	}
	u, ok := s.digits()
	n := int64(u)
	if neg {
		n = -n
	}
	return n, ok && n>>(bits-1) == n>>63 // the bits above the sign are its copies
}

// uint reads a non-negative integer that fits in an unsigned integer of
// the given size; -0 is not one for encoding/json either.
func (s *scanner) uint(bits int) (uint64, bool) {
	if s.next() == '-' {
		return 0, false
	}
	n, ok := s.digits()
	return n, ok && n>>(bits-1)>>1 == 0
}

// twins reads a list of twin ids. Twins.UnmarshalJSON also accepts a
// number, strings and more: those are left to it.
func (s *scanner) twins() (Twins, bool) {
	if s.next() != '[' {
		return nil, false
	}
	s.i++
	t := Twins{} // not nil, even for []: as encoding/json
	if s.next() == ']' {
		s.i++
		return t, true
	}
	for {
		n, ok := s.uint(32)
		if !ok {
			return nil, false
		}
		t = append(t, uint32(n))
		switch s.next() {
		case ',':
			s.i++
		case ']':
			s.i++
			return t, true
		default:
			return nil, false
		}
	}
}

func (s *scanner) error() (*Error, bool) {
	e := new(Error)
	return e, s.object(errorKeys, func(key string) (ok bool) {
		var n uint64
		switch key {
		case "code":
			n, ok = s.uint(32)
			e.Code = uint32(n)
		case "message":
			e.Message, ok = s.str()
		}
		return ok
	})
}
