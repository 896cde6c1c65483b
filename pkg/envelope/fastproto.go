package envelope

import (
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// Every envelope a peer receives is decoded, and the generic decoder of
// package proto spends most of its time finding out what the message
// looks like. unmarshalFast decodes the envelopes that look as senders
// write them, and leaves everything else to proto.Unmarshal, so the
// result is always proto.Unmarshal's:
//
//   - each field at most once, and at most one member of each oneof
//     (proto.Unmarshal would keep the last, or merge messages);
//   - only the fields of types.proto, each with its wire type (no
//     unknown fields to keep);
//   - strings that are valid UTF-8 (proto3 refuses the others).
//
// The fields share one copy of the input: bytes fields are slices of it
// (each capped at its own end), strings are views of it that nothing
// writes to, since no two fields overlap.

// unmarshalFast fills the zero e from b and reports whether b had the
// usual shape. When it did not, e is left half-filled.
func unmarshalFast(b []byte, e *Envelope) bool {
	if len(b) == 0 {
		return true // every field at its zero value, as proto.Unmarshal
	}
	d := fastDecoder{buf: append([]byte(nil), b...)}
	var seen uint32 // bit n: field n was read; bits 30, 31: the oneofs
	const messageSet, payloadSet = 1 << 30, 1 << 31
	for d.i < len(d.buf) {
		num, typ, ok := d.tag()
		if !ok || num < 1 || num > 17 || seen&(1<<num) != 0 {
			return false
		}
		seen |= 1 << num
		switch num {
		case 3, 4:
			if typ != protowire.VarintType {
				return false
			}
			v, ok := d.varint()
			if !ok {
				return false
			}
			if num == 3 {
				e.Timestamp = v
			} else {
				e.Expiration = v
			}
			continue
		case 7, 8, 12, 15, 16:
			if seen&messageSet != 0 {
				return false
			}
			seen |= messageSet
		case 13, 14:
			if seen&payloadSet != 0 {
				return false
			}
			seen |= payloadSet
		case 17:
			seen &^= 1 << 17 // repeated
		}
		if typ != protowire.BytesType {
			return false
		}
		v, ok := d.bytes()
		if !ok {
			return false
		}
		switch num {
		case 1:
			e.Uid, ok = d.str(v)
		case 2:
			e.Tags, ok = d.strPtr(v)
		case 5:
			e.Source, ok = d.address(v)
		case 6:
			e.Destination, ok = d.address(v)
		case 7:
			r := new(Request)
			e.Message = &Envelope_Request{Request: r}
			ok = d.fields(v, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) bool {
				var ok bool
				if num == 1 && typ == protowire.BytesType {
					r.Command, ok = d.str(v)
				}
				return ok
			})
		case 8:
			e.Message = &Envelope_Response{Response: new(Response)}
			ok = len(v) == 0
		case 12:
			r := new(Error)
			e.Message = &Envelope_Error{Error: r}
			ok = d.fields(v, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) bool {
				var ok bool
				switch {
				case num == 1 && typ == protowire.VarintType:
					r.Code, ok = uint32(n), true
				case num == 2 && typ == protowire.BytesType:
					r.Message, ok = d.str(v)
				}
				return ok
			})
		case 15:
			e.Message = &Envelope_Ping{Ping: new(Ping)}
			ok = len(v) == 0
		case 16:
			e.Message = &Envelope_Pong{Pong: new(Pong)}
			ok = len(v) == 0
		case 9:
			e.Signature = v
		case 10:
			e.Schema, ok = d.strPtr(v)
		case 11:
			e.Federation, ok = d.strPtr(v)
		case 13:
			e.Payload = &Envelope_Plain{Plain: v}
		case 14:
			e.Payload = &Envelope_Cipher{Cipher: v}
		case 17:
			var s string
			s, ok = d.str(v)
			e.Relays = append(e.Relays, s)
		}
		if !ok {
			return false
		}
	}
	return true
}

// fastDecoder reads buf, the envelope's own copy of the input.
type fastDecoder struct {
	buf []byte
	i   int
}

func (d *fastDecoder) tag() (protowire.Number, protowire.Type, bool) {
	num, typ, n := protowire.ConsumeTag(d.buf[d.i:])
	if n < 0 {
		return 0, 0, false
	}
	d.i += n
	return num, typ, true
}

func (d *fastDecoder) varint() (uint64, bool) {
	v, n := protowire.ConsumeVarint(d.buf[d.i:])
	if n < 0 {
		return 0, false
	}
	d.i += n
	return v, true
}

// bytes reads a length-delimited value: a slice of buf that cannot grow
// into what follows. Empty values are empty but not nil, as proto's.
func (d *fastDecoder) bytes() ([]byte, bool) {
	v, n := protowire.ConsumeBytes(d.buf[d.i:])
	if n < 0 {
		return nil, false
	}
	d.i += n
	return v[:len(v):len(v)], true
}

// str returns v, a part of buf no other field shares, as a string.
func (d *fastDecoder) str(v []byte) (string, bool) {
	if !utf8.Valid(v) {
		return "", false
	}
	if len(v) == 0 {
		return "", true
	}
	return unsafe.String(&v[0], len(v)), true
}

func (d *fastDecoder) strPtr(v []byte) (*string, bool) {
	s, ok := d.str(v)
	return &s, ok
}

func (d *fastDecoder) address(v []byte) (*Address, bool) {
	a := new(Address)
	return a, d.fields(v, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) bool {
		var ok bool
		switch {
		case num == 1 && typ == protowire.VarintType:
			a.Twin, ok = uint32(n), true
		case num == 2 && typ == protowire.BytesType:
			a.Connection, ok = d.strPtr(v)
		}
		return ok
	})
}

// fields reads the fields of an embedded message m, each at most once,
// and hands each to field: the value of a length-delimited one in v, of a
// varint in n. Other wire types are refused.
func (d *fastDecoder) fields(m []byte, field func(num protowire.Number, typ protowire.Type, v []byte, n uint64) bool) bool {
	var seen uint64
	for len(m) > 0 {
		num, typ, k := protowire.ConsumeTag(m)
		if k < 0 || num > 63 || seen&(1<<num) != 0 {
			return false
		}
		seen |= 1 << num
		m = m[k:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.VarintType:
			n, k = protowire.ConsumeVarint(m)
		case protowire.BytesType:
			v, k = protowire.ConsumeBytes(m)
			v = v[:len(v):len(v)]
		default:
			return false
		}
		if k < 0 || !field(num, typ, v, n) {
			return false
		}
		m = m[k:]
	}
	return true
}
