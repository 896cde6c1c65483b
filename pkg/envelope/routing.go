package envelope

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Kind is the message kind of an envelope (its "message" oneof).
type Kind uint8

// Message kinds.
const (
	KindNone Kind = iota
	KindRequest
	KindResponse
	KindError
	KindPing
	KindPong
)

// String names the kind.
func (k Kind) String() string {
	return [...]string{"none", "request", "response", "error", "ping", "pong"}[k]
}

// RawAddress is an Address read in place: Session aliases the input bytes.
type RawAddress struct {
	Twin       uint32
	HasSession bool
	Session    []byte
}

// Routing holds what a relay needs to route an envelope. Its byte slices
// alias the buffer given to ReadRouting; copy them to keep them longer.
type Routing struct {
	UID         []byte
	HasTags     bool
	Tags        []byte
	Timestamp   uint64
	Expiration  uint64
	Source      RawAddress
	Destination RawAddress
	Kind        Kind
	Signed      bool
}

// TTL is the remaining time to live at now, in seconds.
func (r *Routing) TTL(now time.Time) int64 {
	return RemainingTTL(r.Timestamp, r.Expiration, now)
}

// FailFast reports whether the tags ask for an immediate offline error.
func (r *Routing) FailFast() bool {
	return r.HasTags && hasTagBytes(r.Tags, TagFailFast)
}

func hasTagBytes(tags []byte, tag string) bool {
	start := 0
	for i := 0; i <= len(tags); i++ {
		if i == len(tags) || tags[i] == ',' || tags[i] == ' ' {
			if string(tags[start:i]) == tag {
				return true
			}
			start = i + 1
		}
	}
	return false
}

// ReadRouting reads the routing fields of a serialized envelope without
// decoding the rest and without allocating. Fields it does not need are
// skipped, but the whole buffer must be well-formed protobuf.
func ReadRouting(b []byte, r *Routing) error {
	*r = Routing{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			r.UID, n = protowire.ConsumeBytes(b)
		case num == 2 && typ == protowire.BytesType:
			r.Tags, n = protowire.ConsumeBytes(b)
			r.HasTags = true
		case num == 3 && typ == protowire.VarintType:
			r.Timestamp, n = protowire.ConsumeVarint(b)
		case num == 4 && typ == protowire.VarintType:
			r.Expiration, n = protowire.ConsumeVarint(b)
		case (num == 5 || num == 6) && typ == protowire.BytesType:
			var sub []byte
			sub, n = protowire.ConsumeBytes(b)
			if n >= 0 {
				a := &r.Source
				if num == 6 {
					a = &r.Destination
				}
				if err := readAddress(sub, a); err != nil {
					return err
				}
			}
		case num == 9 && typ == protowire.BytesType:
			var sig []byte
			sig, n = protowire.ConsumeBytes(b)
			r.Signed = len(sig) > 0
		case num == 7 || num == 8 || num == 12 || num == 15 || num == 16:
			if typ != protowire.BytesType {
				return fmt.Errorf("%w: field %d has wire type %d", ErrMalformed, num, typ)
			}
			_, n = protowire.ConsumeBytes(b)
			r.Kind = kindOf(num)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return nil
}

func kindOf(num protowire.Number) Kind {
	switch num {
	case 7:
		return KindRequest
	case 8:
		return KindResponse
	case 12:
		return KindError
	case 15:
		return KindPing
	}
	return KindPong
}

// readAddress merges an encoded Address into a: protobuf merges repeated
// occurrences of a message field, so a later one only overrides what it sets.
func readAddress(b []byte, a *RawAddress) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: address: %v", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			a.Twin = uint32(v)
		case num == 2 && typ == protowire.BytesType:
			a.Session, n = protowire.ConsumeBytes(b)
			a.HasSession = true
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("%w: address field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return nil
}
