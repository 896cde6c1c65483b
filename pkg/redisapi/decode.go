package redisapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// What the peer accepts from the queues it pops (msgbus.system.local and
// msgbus.system.reply): the decoders below are the peer's, so a client can
// check a message the way the peer will.

// MaxDestinations bounds the dst list of one request.
const MaxDestinations = 1024

// Twins is the dst list of an outgoing request. It also accepts a single
// number or a numeric string, as some clients send; it is written as a
// plain JSON array.
type Twins []uint32

// UnmarshalJSON accepts [1,2], 1, "1" and null.
func (t *Twins) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*t = nil
		return nil
	case len(b) > 0 && b[0] == '[':
		var nums []uint32
		if json.Unmarshal(b, &nums) == nil { // the usual [1,2]
			*t = nums
			return nil
		}
		var list []json.RawMessage
		if err := json.Unmarshal(b, &list); err != nil {
			return err
		}
		out := make([]uint32, 0, len(list))
		for _, raw := range list {
			n, err := parseTwin(raw)
			if err != nil {
				return err
			}
			out = append(out, n)
		}
		*t = out
		return nil
	}
	n, err := parseTwin(b)
	if err != nil {
		return err
	}
	*t = Twins{n}
	return nil
}

func parseTwin(raw []byte) (uint32, error) {
	s := string(bytes.TrimSpace(raw))
	if len(s) >= 2 && s[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, err
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad twin id %s", raw)
	}
	return uint32(n), nil
}

// ParseAddress splits a "<twin>" or "<twin>:<sid>" address, the src of an
// incoming message and the dst of an outgoing response.
func ParseAddress(s string) (twin uint32, sid string, err error) {
	t, sid := s, ""
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			t, sid = s[:i], s[i+1:]
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil {
		return 0, "", fmt.Errorf("bad address %q", s)
	}
	return uint32(n), sid, nil
}

// Decoding errors. Both carry the detail in their wrapped message. Their
// text is the peer's, which it sends back to clients in error answers and
// dead letters.
var (
	// ErrBadJSON means the bytes are not a JSON object of the right shape.
	ErrBadJSON = errors.New("peer: malformed JSON message")
	// ErrBadMessage means the JSON parsed but a field is missing or wrong.
	ErrBadMessage = errors.New("peer: invalid message")
)

// DecodeOutgoingRequest parses and checks a message from QueueLocal as
// the peer does. Errors wrap ErrBadJSON or ErrBadMessage; with
// ErrBadMessage the returned request is non-nil so the caller can still
// answer on its ret queue. On success Payload returns the decoded Data
// without decoding it again.
func DecodeOutgoingRequest(b []byte) (*OutgoingRequest, error) {
	return decodeOutgoingRequest(b, unmarshal[OutgoingRequest])
}

// DecodeOutgoingRequestString is DecodeOutgoingRequest of a message held
// in a string, as Redis clients return them; the request's strings share
// msg's memory.
func DecodeOutgoingRequestString(msg string) (*OutgoingRequest, error) {
	return decodeOutgoingRequest(msg, unmarshalString[OutgoingRequest])
}

// decodeOutgoingRequest is DecodeOutgoingRequest with unmarshal in place
// of json.Unmarshal: the tests pass json.Unmarshal to compare.
func decodeOutgoingRequest[M string | []byte](b M, unmarshal func(M, *OutgoingRequest) error) (*OutgoingRequest, error) {
	var r OutgoingRequest
	if err := unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	if r.Expiration < 0 {
		// exp is unsigned seconds: a number that is not one is not of
		// the right shape, like a string.
		return nil, fmt.Errorf("%w: exp %d is negative", ErrBadJSON, r.Expiration)
	}
	payload, err := base64.StdEncoding.DecodeString(r.Data)
	switch {
	case r.ReplyTo == "":
		// Without ret there is nobody to answer: treat as garbage.
		return nil, fmt.Errorf("%w: missing ret", ErrBadJSON)
	case err != nil:
		return &r, fmt.Errorf("%w: dat is not standard base64: %v", ErrBadMessage, err)
	case r.Command == "":
		return &r, fmt.Errorf("%w: missing cmd", ErrBadMessage)
	case len(r.Destinations) == 0:
		return &r, fmt.Errorf("%w: missing dst", ErrBadMessage)
	case len(r.Destinations) > MaxDestinations:
		return &r, fmt.Errorf("%w: %d destinations, at most %d", ErrBadMessage, len(r.Destinations), MaxDestinations)
	}
	for _, d := range r.Destinations {
		if d == 0 {
			return &r, fmt.Errorf("%w: destination twin 0", ErrBadMessage)
		}
	}
	r.payload = decoded{data: r.Data, b: payload}
	return &r, nil
}

// DecodeOutgoingResponse parses and checks a message from QueueReply as
// the peer does. Errors wrap ErrBadJSON or ErrBadMessage. On success
// Payload returns the decoded Data without decoding it again.
func DecodeOutgoingResponse(b []byte) (*OutgoingResponse, error) {
	return decodeOutgoingResponse(b, unmarshal[OutgoingResponse])
}

// DecodeOutgoingResponseString is DecodeOutgoingResponse of a message
// held in a string, as Redis clients return them; the response's strings
// share msg's memory.
func DecodeOutgoingResponseString(msg string) (*OutgoingResponse, error) {
	return decodeOutgoingResponse(msg, unmarshalString[OutgoingResponse])
}

// decodeOutgoingResponse is DecodeOutgoingResponse with unmarshal in place
// of json.Unmarshal: the tests pass json.Unmarshal to compare.
func decodeOutgoingResponse[M string | []byte](b M, unmarshal func(M, *OutgoingResponse) error) (*OutgoingResponse, error) {
	var r OutgoingResponse
	if err := unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	payload, err := base64.StdEncoding.DecodeString(r.Data)
	switch {
	case err != nil:
		return &r, fmt.Errorf("%w: dat is not standard base64: %v", ErrBadMessage, err)
	case r.Ref == "":
		return &r, fmt.Errorf("%w: missing ref", ErrBadMessage)
	case r.Destination == "":
		return &r, fmt.Errorf("%w: missing dst", ErrBadMessage)
	}
	if twin, _, err := ParseAddress(r.Destination); err != nil || twin == 0 {
		return &r, fmt.Errorf("%w: bad dst %q", ErrBadMessage, r.Destination)
	}
	r.payload = decoded{data: r.Data, b: payload}
	return &r, nil
}

// decoded caches the payload a decoder found in Data, as long as Data is
// unchanged.
type decoded struct {
	data string // the Data it was decoded from
	b    []byte // nil: not decoded
}

func (d *decoded) get(data string) ([]byte, error) {
	if d.b != nil && d.data == data {
		return d.b, nil
	}
	return decode(data)
}
