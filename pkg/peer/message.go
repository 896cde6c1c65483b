package peer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// The JSON messages of the local Redis API (PROTOCOL.md §6). Field names
// are the contract; unknown fields are ignored.

// OutgoingRequest is what a client pushes on msgbus.system.local.
type OutgoingRequest struct {
	Version    int     `json:"ver"`
	Ref        string  `json:"ref"`
	Command    string  `json:"cmd"`
	Expiration uint64  `json:"exp"`
	Data       string  `json:"dat"`
	Tags       *string `json:"tag"`
	Dst        Twins   `json:"dst"`
	Ret        string  `json:"ret"`
	Schema     string  `json:"shm"`
	Now        int64   `json:"now"`
	Session    *string `json:"con,omitempty"`
	payload    []byte  // decoded Data
}

// IncomingRequest is what the peer pushes on msgbus.<cmd>.
type IncomingRequest struct {
	Version    int     `json:"ver"`
	Ref        string  `json:"ref"`
	Source     string  `json:"src"`
	Command    string  `json:"cmd"`
	Expiration uint64  `json:"exp"`
	Data       string  `json:"dat"`
	Tags       *string `json:"tag"`
	Ret        string  `json:"ret"`
	Schema     string  `json:"shm"`
	Now        int64   `json:"now"`
}

// OutgoingResponse is what a service pushes on msgbus.system.reply.
type OutgoingResponse struct {
	Version int        `json:"ver"`
	Ref     string     `json:"ref"`
	Data    string     `json:"dat"`
	Dst     string     `json:"dst"`
	Schema  string     `json:"shm"`
	Now     int64      `json:"now"`
	Error   *JSONError `json:"err"`
	payload []byte
}

// IncomingResponse is what the peer pushes on a client's ret queue.
type IncomingResponse struct {
	Version int        `json:"ver"`
	Ref     string     `json:"ref"`
	Data    string     `json:"dat"`
	Source  string     `json:"src"`
	Schema  string     `json:"shm"`
	Now     int64      `json:"now"`
	Error   *JSONError `json:"err"`
}

// JSONError is the err field: {"code":N,"message":"..."}.
type JSONError struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

// Twins is the dst list of an outgoing request. It also accepts a single
// number or a numeric string, as some clients send.
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

// Decoding errors. Both carry the detail in their wrapped message.
var (
	// ErrBadJSON means the bytes are not a JSON object of the right shape.
	ErrBadJSON = errors.New("peer: malformed JSON message")
	// ErrBadMessage means the JSON parsed but a field is missing or wrong.
	ErrBadMessage = errors.New("peer: invalid message")
)

// DecodeOutgoingRequest parses and checks a message from
// msgbus.system.local. Errors wrap ErrBadJSON or ErrBadMessage; with
// ErrBadMessage the returned request is non-nil so the caller can still
// answer on its ret queue.
func DecodeOutgoingRequest(b []byte) (*OutgoingRequest, error) {
	var r OutgoingRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	payload, err := base64.StdEncoding.DecodeString(r.Data)
	switch {
	case r.Ret == "":
		// Without ret there is nobody to answer: treat as garbage.
		return nil, fmt.Errorf("%w: missing ret", ErrBadJSON)
	case err != nil:
		return &r, fmt.Errorf("%w: dat is not standard base64: %v", ErrBadMessage, err)
	case r.Command == "":
		return &r, fmt.Errorf("%w: missing cmd", ErrBadMessage)
	case len(r.Dst) == 0:
		return &r, fmt.Errorf("%w: missing dst", ErrBadMessage)
	case len(r.Dst) > MaxDestinations:
		return &r, fmt.Errorf("%w: %d destinations, at most %d", ErrBadMessage, len(r.Dst), MaxDestinations)
	}
	for _, d := range r.Dst {
		if d == 0 {
			return &r, fmt.Errorf("%w: destination twin 0", ErrBadMessage)
		}
	}
	r.payload = payload
	return &r, nil
}

// DecodeOutgoingResponse parses and checks a message from
// msgbus.system.reply. Errors wrap ErrBadJSON or ErrBadMessage.
func DecodeOutgoingResponse(b []byte) (*OutgoingResponse, error) {
	var r OutgoingResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJSON, err)
	}
	payload, err := base64.StdEncoding.DecodeString(r.Data)
	switch {
	case err != nil:
		return &r, fmt.Errorf("%w: dat is not standard base64: %v", ErrBadMessage, err)
	case r.Ref == "":
		return &r, fmt.Errorf("%w: missing ref", ErrBadMessage)
	case r.Dst == "":
		return &r, fmt.Errorf("%w: missing dst", ErrBadMessage)
	}
	if a, err := parseAddress(r.Dst); err != nil || a.twin == 0 {
		return &r, fmt.Errorf("%w: bad dst %q", ErrBadMessage, r.Dst)
	}
	r.payload = payload
	return &r, nil
}

// MaxDestinations bounds the dst list of one request.
const MaxDestinations = 1024

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
	twin, sid, _ := cutByte(s, ':')
	n, err := strconv.ParseUint(twin, 10, 32)
	if err != nil {
		return address{}, fmt.Errorf("bad address %q", s)
	}
	return address{twin: uint32(n), sid: sid}, nil
}

func cutByte(s string, c byte) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
