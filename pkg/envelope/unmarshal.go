package envelope

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Decoding: every envelope a peer receives is decoded, and the generic
// decoder of package proto spends most of its time finding out what the
// message looks like. unmarshalVT decodes with the code that vtprotobuf
// (planetscale/vtprotobuf, `make proto`) generates into types_vtproto.pb.go,
// which follows proto.Unmarshal field by field (the last of a repeated
// scalar wins, messages and oneof members merge, unknown fields are kept)
// except that it is more lenient: it does not check that strings are
// UTF-8, which proto3 requires, it takes a 10-byte varint past 64 bits, and
// it skips a group whose end tag names another field. So Unmarshal takes
// the generated decoder's result only when the wire form is well formed as
// protowire reads it with every string UTF-8 (a walk over the tags that
// allocates nothing) and no message has unknown fields (senders write
// none), and otherwise lets proto.Unmarshal decide.
// FuzzUnmarshalVT checks that the result is always proto.Unmarshal's.
//
// The generated decoder copies each bytes field and each string out of the
// input, so nothing aliases the caller's buffer. Encoding stays
// proto.Marshal: the compatibility vectors fix its bytes.

// unmarshalVT fills the zero e from b and reports whether the result is
// what proto.Unmarshal would give. When it is not, e is left half-filled.
func unmarshalVT(b []byte, e *Envelope) bool {
	return wellFormed(b, 0) && e.UnmarshalVT(b) == nil && !hasUnknown(e)
}

// wellFormed reports whether b is a sequence of fields protowire reads
// (varints of at most 64 bits, groups closed by their own number) whose
// strings are UTF-8, every occurrence of them (proto.Unmarshal checks each,
// even one a later occurrence replaces). msg is the message's field number
// in the envelope, 0 for the envelope itself; fields 5-8, 12, 15 and 16 of
// the envelope are messages, walked too.
func wellFormed(b []byte, msg protowire.Number) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			switch {
			case msg == 0 && (num >= 5 && num <= 8 || num == 12 || num == 15 || num == 16):
				if !wellFormed(v, num) {
					return false
				}
			case isString(msg, num):
				if !utf8.Valid(v) {
					return false
				}
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// isString reports whether field num of the message at envelope field msg
// (0: the envelope) is a string.
func isString(msg, num protowire.Number) bool {
	switch msg {
	case 0: // uid, tags, schema, federation, relays
		return num == 1 || num == 2 || num == 10 || num == 11 || num == 17
	case 5, 6: // Address.connection
		return num == 2
	case 7: // Request.command
		return num == 1
	case 12: // Error.message
		return num == 2
	}
	return false
}

// hasUnknown reports whether e or a message in it kept unknown fields.
func hasUnknown(e *Envelope) bool {
	if len(e.unknownFields) != 0 ||
		e.Source != nil && len(e.Source.unknownFields) != 0 ||
		e.Destination != nil && len(e.Destination.unknownFields) != 0 {
		return true
	}
	switch m := e.Message.(type) {
	case *Envelope_Request:
		return m.Request != nil && len(m.Request.unknownFields) != 0
	case *Envelope_Response:
		return m.Response != nil && len(m.Response.unknownFields) != 0
	case *Envelope_Error:
		return m.Error != nil && len(m.Error.unknownFields) != 0
	case *Envelope_Ping:
		return m.Ping != nil && len(m.Ping.unknownFields) != 0
	case *Envelope_Pong:
		return m.Pong != nil && len(m.Pong.unknownFields) != 0
	}
	return false
}
