package wsframe

import (
	"encoding/binary"
	"errors"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
)

// Opcode is a frame's opcode (RFC 6455 §5.2): gobwas/ws's.
type Opcode = ws.OpCode

// Opcodes.
const (
	OpContinuation = ws.OpContinuation
	OpText         = ws.OpText
	OpBinary       = ws.OpBinary
	OpClose        = ws.OpClose
	OpPing         = ws.OpPing
	OpPong         = ws.OpPong
)

// StatusCode is a close code (RFC 6455 §7.4): coder/websocket's, whose
// CloseStatus answers -1 for an error that is not a close.
type StatusCode = websocket.StatusCode

// Close codes used here.
const (
	StatusNormalClosure   = websocket.StatusNormalClosure
	StatusGoingAway       = websocket.StatusGoingAway
	StatusProtocolError   = websocket.StatusProtocolError
	StatusNoStatusRcvd    = websocket.StatusNoStatusRcvd // never on the wire: a close frame without a code
	StatusPolicyViolation = websocket.StatusPolicyViolation
	StatusMessageTooBig   = websocket.StatusMessageTooBig
	StatusInternalError   = websocket.StatusInternalError
)

// CloseError is returned by ReadMessage when the peer closed the
// connection with a close frame (coder/websocket's type).
type CloseError = websocket.CloseError

// CloseStatus returns the code of the CloseError in err's chain, or -1.
func CloseStatus(err error) StatusCode { return websocket.CloseStatus(err) }

// validWireCode reports whether code may appear in a close frame. Not
// ws.CheckCloseFrameData: it refuses 1012-1014 (registered with IANA
// since RFC 6455, sent by servers that restart) and accepts 5000 and over.
func validWireCode(code StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// Errors callers act on.
var (
	// ErrMessageTooBig: a message over the read limit; the connection was
	// closed with 1009.
	ErrMessageTooBig = errors.New("websocket: message over the read limit")
	// ErrClosed: the connection was closed by this side.
	ErrClosed = errors.New("websocket: connection closed")
)

// A violation of RFC 6455 by the peer is a ws.ProtocolError (ws.CheckHeader
// returns them too); the connection is closed with 1002.

// header is a decoded frame header.
type header = ws.Header

// appendHeader appends the header of a final frame with op and a payload of
// n bytes, masked with key when masked. Ours, not ws.WriteHeaderBuffer:
// that writes to an io.Writer through a scratch buffer, 8.5 ns against 1 ns
// (BenchmarkWriteHeader), on every envelope the relay forwards.
func appendHeader(b []byte, op Opcode, n int, masked bool, key [4]byte) []byte {
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
		b = append(b, key[:]...)
	}
	return b
}

// parseHeader decodes the header at the start of b. It returns the header
// length, or 0 when b is too short to hold the whole header. Ours, not
// ws.ReadHeaderBuffer: that reads from an io.Reader in two calls, which from
// our buffer is 25 ns against 10 ns per frame (BenchmarkParseHeader), and
// cannot tell "not all here yet" from an error without a read.
func parseHeader(b []byte) (h header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = Opcode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:])
		if u>>63 != 0 {
			return h, 0, ws.ProtocolError("frame length with the most significant bit set")
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}
