package peer

import (
	"strconv"

	"github.com/rmb-go/rmb/pkg/redisapi"
)

// The JSON messages of the local Redis API (docs/protocol.md §9) are those of
// package redisapi; the names below are kept for the peer's callers.
// Field names are the contract; unknown fields are ignored.
type (
	// OutgoingRequest is what a client pushes on msgbus.system.local.
	OutgoingRequest = redisapi.OutgoingRequest
	// IncomingRequest is what the peer pushes on msgbus.<cmd>.
	IncomingRequest = redisapi.IncomingRequest
	// OutgoingResponse is what a service pushes on msgbus.system.reply.
	OutgoingResponse = redisapi.OutgoingResponse
	// IncomingResponse is what the peer pushes on a client's ret queue.
	IncomingResponse = redisapi.IncomingResponse
	// JSONError is the err field: {"code":N,"message":"..."}.
	JSONError = redisapi.Error
	// Twins is the dst list of an outgoing request.
	Twins = redisapi.Twins
)

// Decoding errors (redisapi.ErrBadJSON and redisapi.ErrBadMessage).
var (
	// ErrBadJSON means the bytes are not a JSON object of the right shape.
	ErrBadJSON = redisapi.ErrBadJSON
	// ErrBadMessage means the JSON parsed but a field is missing or wrong.
	ErrBadMessage = redisapi.ErrBadMessage
)

// MaxDestinations bounds the dst list of one request.
const MaxDestinations = redisapi.MaxDestinations

// DecodeOutgoingRequest parses and checks a message from
// msgbus.system.local (redisapi.DecodeOutgoingRequest).
func DecodeOutgoingRequest(b []byte) (*OutgoingRequest, error) {
	return redisapi.DecodeOutgoingRequest(b)
}

// DecodeOutgoingResponse parses and checks a message from
// msgbus.system.reply (redisapi.DecodeOutgoingResponse).
func DecodeOutgoingResponse(b []byte) (*OutgoingResponse, error) {
	return redisapi.DecodeOutgoingResponse(b)
}

// address is a parsed "<twin>" or "<twin>:<sid>".
type address struct {
	twin uint32
	sid  string
}

func (a address) String() string {
	s := strconv.FormatUint(uint64(a.twin), 10)
	if a.sid != "" {
		s += ":" + a.sid
	}
	return s
}

func parseAddress(s string) (address, error) {
	twin, sid, err := redisapi.ParseAddress(s)
	if err != nil {
		return address{}, err
	}
	return address{twin: twin, sid: sid}, nil
}
