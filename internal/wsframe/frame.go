package wsframe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"
)

// Opcode is a frame's opcode (RFC 6455 §5.2).
type Opcode byte

// Opcodes.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xA
)

func (o Opcode) control() bool { return o&0x8 != 0 }

// StatusCode is a close code (RFC 6455 §7.4).
type StatusCode int

// Close codes used here.
const (
	StatusNormalClosure   StatusCode = 1000
	StatusGoingAway       StatusCode = 1001
	StatusProtocolError   StatusCode = 1002
	StatusNoStatusRcvd    StatusCode = 1005 // never on the wire: a close frame without a code
	StatusPolicyViolation StatusCode = 1008
	StatusMessageTooBig   StatusCode = 1009
	StatusInternalError   StatusCode = 1011
)

// validWireCode reports whether code may appear in a close frame.
func validWireCode(code StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// CloseError is returned by ReadMessage when the peer closed the
// connection with a close frame.
type CloseError struct {
	Code   StatusCode
	Reason string
}

func (e CloseError) Error() string {
	return fmt.Sprintf("websocket closed: status %d, reason %q", e.Code, e.Reason)
}

// CloseStatus returns the code of the CloseError in err's chain, or -1.
func CloseStatus(err error) StatusCode {
	var ce CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// Errors callers act on.
var (
	// ErrMessageTooBig: a message over the read limit; the connection was
	// closed with 1009.
	ErrMessageTooBig = errors.New("websocket: message over the read limit")
	// ErrClosed: the connection was closed by this side.
	ErrClosed = errors.New("websocket: connection closed")
)

// protocolError is a violation of RFC 6455 by the peer; the connection is
// closed with 1002.
type protocolError string

func (e protocolError) Error() string { return "websocket protocol violation: " + string(e) }

// header is a decoded frame header.
type header struct {
	fin    bool
	rsv    byte // the three RSV bits
	op     Opcode
	masked bool
	key    uint32 // masking key, as the little-endian uint32 of its 4 bytes
	length int64
}

// maxHeader is the longest frame header: 2 + 8 (length) + 4 (mask).
const maxHeader = 14

// appendHeader appends the header of a final frame with op and a payload of
// n bytes, masked with key when masked.
func appendHeader(b []byte, op Opcode, n int, masked bool, key uint32) []byte {
	b0 := 0x80 | byte(op)
	var m byte
	if masked {
		m = 0x80
	}
	switch {
	case n <= 125:
		b = append(b, b0, m|byte(n))
	case n <= 0xffff:
		b = append(b, b0, m|126, byte(n>>8), byte(n))
	default:
		b = append(b, b0, m|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if masked {
		b = binary.LittleEndian.AppendUint32(b, key)
	}
	return b
}

// parseHeader decodes the header at the start of b. It returns the header
// length, or 0 when b is too short to hold the whole header.
func parseHeader(b []byte) (h header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	h.fin = b[0]&0x80 != 0
	h.rsv = b[0] & 0x70
	h.op = Opcode(b[0] & 0x0f)
	h.masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.length = int64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return h, 0, protocolError("frame length with the most significant bit set")
		}
		h.length = int64(u)
		n = 10
	default:
		h.length = int64(l)
	}
	if h.masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		h.key = binary.LittleEndian.Uint32(b[n:])
		n += 4
	}
	return h, n, nil
}

// mask XORs b with the masking key, starting pos bytes into the key, and
// returns the key position after b. The same call unmasks.
func mask(key uint32, pos int, b []byte) int {
	k := bits.RotateLeft32(key, -8*(pos&3))
	k64 := uint64(k)<<32 | uint64(k)
	for len(b) >= 8 {
		v := binary.LittleEndian.Uint64(b)
		binary.LittleEndian.PutUint64(b, v^k64)
		b = b[8:]
	}
	for i := range b {
		b[i] ^= byte(k)
		k = bits.RotateLeft32(k, -8)
	}
	return (pos + len(b)) & 3
}

var timeZero time.Time
