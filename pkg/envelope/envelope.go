package envelope

import (
	"crypto/md5"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/rmb-go/rmb/pkg/identity"
)

// DefaultMaxSize is the largest serialized envelope accepted by default.
const DefaultMaxSize = 1 << 20

// TTL bounds applied by peers to a requested expiration (PROTOCOL.md §3).
const (
	DefaultTTL = 300  // seconds, used when 0 is requested
	MaxTTL     = 1800 // seconds
)

// Error codes carried in Error envelopes (docs/protocol.md §9).
const (
	CodeMalformed     = 100
	CodeBadPayload    = 101
	CodeExpired       = 102
	CodeUnknownTwin   = 103
	CodeBadSignature  = 104
	CodeNoE2EKey      = 105
	CodeDecryptFailed = 106
	CodeDenied        = 401
	CodeNotFound      = 404
	CodeTimeout       = 408
	CodeRateLimited   = 429
	CodeInternal      = 500
	CodeOffline       = 503
	CodeUndeliverable = 504
)

// Errors callers act on.
var (
	ErrTooBig      = errors.New("envelope: larger than the size limit")
	ErrMalformed   = errors.New("envelope: malformed")
	ErrNoSignature = errors.New("envelope: not signed")
	ErrExpired     = errors.New("envelope: expired")
)

// ClampTTL applies the peer rules: 0 becomes DefaultTTL, more than MaxTTL
// becomes MaxTTL.
func ClampTTL(seconds uint64) uint64 {
	switch {
	case seconds == 0:
		return DefaultTTL
	case seconds > MaxTTL:
		return MaxTTL
	}
	return seconds
}

// NewAddress returns the address of a twin's session (sid "" = default).
func NewAddress(twin uint32, sid string) *Address {
	a := &Address{Twin: twin}
	if sid != "" {
		a.Connection = &sid
	}
	return a
}

// NewRequest builds an unstamped, unsigned request.
func NewRequest(uid, command string, payload []byte, ttl uint64) *Envelope {
	return &Envelope{
		Uid:        uid,
		Expiration: ttl,
		Message:    &Envelope_Request{Request: &Request{Command: command}},
		Payload:    &Envelope_Plain{Plain: payload},
	}
}

// NewResponse builds an unstamped, unsigned response to the request uid.
func NewResponse(uid string, payload []byte, ttl uint64) *Envelope {
	return &Envelope{
		Uid:        uid,
		Expiration: ttl,
		Message:    &Envelope_Response{Response: &Response{}},
		Payload:    &Envelope_Plain{Plain: payload},
	}
}

// NewError builds an unstamped, unsigned error answer to the request uid.
func NewError(uid string, code uint32, message string, ttl uint64) *Envelope {
	return &Envelope{
		Uid:        uid,
		Expiration: ttl,
		Message:    &Envelope_Error{Error: &Error{Code: code, Message: message}},
	}
}

// NewPing builds an application-level ping.
func NewPing(uid string, ttl uint64) *Envelope {
	return &Envelope{Uid: uid, Expiration: ttl, Message: &Envelope_Ping{Ping: &Ping{}}}
}

// NewPong builds the answer to a ping.
func NewPong(uid string, ttl uint64) *Envelope {
	return &Envelope{Uid: uid, Expiration: ttl, Message: &Envelope_Pong{Pong: &Pong{}}}
}

// Stamp sets the timestamp to now right before signing. A fresh envelope
// (timestamp 0 or in the future) keeps its expiration; an older one has its
// expiration shortened by the time elapsed (floored at 0), so the absolute
// deadline does not move.
func (e *Envelope) Stamp(now time.Time) {
	n := uint64(max(now.Unix(), 0))
	if e.Timestamp != 0 && e.Timestamp <= n {
		elapsed := n - e.Timestamp
		if elapsed >= e.Expiration {
			e.Expiration = 0
		} else {
			e.Expiration -= elapsed
		}
	}
	e.Timestamp = n
}

// TTL is the remaining time to live in whole seconds at now; <= 0 means
// expired.
func (e *Envelope) TTL(now time.Time) int64 {
	return RemainingTTL(e.Timestamp, e.Expiration, now)
}

// Deadline is the absolute expiry time.
func (e *Envelope) Deadline() time.Time {
	return time.Unix(int64(e.Timestamp+e.Expiration), 0)
}

// Expired reports whether the TTL has run out at now.
func (e *Envelope) Expired(now time.Time) bool { return e.TTL(now) <= 0 }

// RemainingTTL is timestamp + expiration - now in seconds.
func RemainingTTL(timestamp, expiration uint64, now time.Time) int64 {
	return int64(timestamp) + int64(expiration) - now.Unix()
}

// IsRequest, IsResponse, IsError, IsPing and IsPong report the message kind.
func (e *Envelope) IsRequest() bool  { _, ok := e.Message.(*Envelope_Request); return ok }
func (e *Envelope) IsResponse() bool { _, ok := e.Message.(*Envelope_Response); return ok }
func (e *Envelope) IsError() bool    { _, ok := e.Message.(*Envelope_Error); return ok }
func (e *Envelope) IsPing() bool     { _, ok := e.Message.(*Envelope_Ping); return ok }
func (e *Envelope) IsPong() bool     { _, ok := e.Message.(*Envelope_Pong); return ok }

// PayloadBytes returns the plain or cipher payload, whichever is set.
func (e *Envelope) PayloadBytes() []byte {
	switch p := e.Payload.(type) {
	case *Envelope_Plain:
		return p.Plain
	case *Envelope_Cipher:
		return p.Cipher
	}
	return nil
}

// HasTag reports whether the comma or space separated tags contain tag.
func HasTag(tags, tag string) bool {
	for len(tags) > 0 {
		i := strings.IndexAny(tags, ", ")
		var tok string
		if i < 0 {
			tok, tags = tags, ""
		} else {
			tok, tags = tags[:i], tags[i+1:]
		}
		if tok == tag {
			return true
		}
	}
	return false
}

// TagFailFast asks the relay for an immediate "destination offline" error
// instead of queueing.
const TagFailFast = "fail-fast"

// Challenge is the MD5 digest that signatures cover (PROTOCOL.md §3).
func Challenge(e *Envelope) [md5.Size]byte {
	h := md5.New()
	var num [20]byte
	w := func(s string) { h.Write([]byte(s)) }
	u := func(v uint64) { h.Write(strconv.AppendUint(num[:0], v, 10)) }
	w(e.Uid)
	if e.Tags != nil {
		w(*e.Tags)
	}
	u(e.Timestamp)
	u(e.Expiration)
	for _, a := range [2]*Address{e.Source, e.Destination} {
		if a != nil {
			u(uint64(a.Twin))
			if a.Connection != nil {
				w(*a.Connection)
			}
		}
	}
	switch m := e.Message.(type) {
	case *Envelope_Request:
		w(m.Request.GetCommand())
	case *Envelope_Error:
		u(uint64(m.Error.GetCode()))
		w(m.Error.GetMessage())
	}
	if e.Schema != nil {
		w(*e.Schema)
	}
	if e.Federation != nil {
		w(*e.Federation)
	}
	h.Write(e.PayloadBytes())
	for _, r := range e.Relays {
		w(r)
	}
	var out [md5.Size]byte
	h.Sum(out[:0])
	return out
}

// Sign stamps nothing: call Stamp first. It sets the 65-byte signature over
// the challenge.
func (e *Envelope) Sign(id *identity.Identity) {
	c := Challenge(e)
	e.Signature = id.Sign(c[:])
}

// Verify checks the signature against the source twin's public key.
func (e *Envelope) Verify(public []byte) error {
	if len(e.Signature) == 0 {
		return ErrNoSignature
	}
	c := Challenge(e)
	return identity.Verify(public, c[:], e.Signature)
}

// Marshal serializes e in the reference byte order.
func Marshal(e *Envelope) ([]byte, error) {
	return proto.Marshal(e)
}

// Unmarshal decodes b, refusing more than maxSize bytes (0 means
// DefaultMaxSize).
func Unmarshal(b []byte, maxSize int) (*Envelope, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooBig, len(b), maxSize)
	}
	e := new(Envelope)
	if unmarshalVT(b, e) {
		return e, nil
	}
	e = new(Envelope)
	if err := proto.Unmarshal(b, e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return e, nil
}

// String forms of addresses: "<twin>" or "<twin>:<sid>".

// FormatAddress writes a in text form.
func FormatAddress(a *Address) string {
	if a == nil {
		return "0"
	}
	s := strconv.FormatUint(uint64(a.Twin), 10)
	if a.Connection != nil && *a.Connection != "" {
		s += ":" + *a.Connection
	}
	return s
}

// ParseAddress reads "<twin>" or "<twin>:<sid>".
func ParseAddress(s string) (*Address, error) {
	twin, sid, _ := strings.Cut(s, ":")
	n, err := strconv.ParseUint(twin, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("envelope: bad address %q: want <twin> or <twin>:<sid>", s)
	}
	return NewAddress(uint32(n), sid), nil
}
