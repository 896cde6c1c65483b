package redisapi

import (
	"encoding/base64"
	"fmt"
	"time"
	"unsafe"
)

// Queue names.
const (
	QueueLocal      = "msgbus.system.local"      // outgoing requests, client -> peer
	QueueReply      = "msgbus.system.reply"      // outgoing responses, service -> peer
	QueueDeadLetter = "msgbus.system.deadletter" // what could not be delivered or parsed
	CommandPrefix   = "msgbus."                  // incoming requests: msgbus.<cmd>
)

// CommandQueue is the list a service pops to serve cmd.
func CommandQueue(cmd string) string { return CommandPrefix + cmd }

// Version is the only message version in use.
const Version = 1

// OutgoingRequest is pushed by a client to QueueLocal. The peer reads it
// with DecodeOutgoingRequest.
type OutgoingRequest struct {
	Version      int     `json:"ver"`
	Ref          string  `json:"ref"`
	Command      string  `json:"cmd"`
	Expiration   int64   `json:"exp"` // seconds; the peer refuses a negative one
	Data         string  `json:"dat"`
	Tags         *string `json:"tag"`
	Destinations Twins   `json:"dst"`
	Session      *string `json:"con,omitempty"`
	ReplyTo      string  `json:"ret"`
	Schema       string  `json:"shm"`
	Now          int64   `json:"now"`
	payload      decoded // set by DecodeOutgoingRequest
}

// IncomingRequest is pushed by the peer to CommandQueue(cmd).
type IncomingRequest struct {
	Version    int     `json:"ver"`
	Ref        string  `json:"ref"`
	Source     string  `json:"src"`
	Command    string  `json:"cmd"`
	Expiration uint64  `json:"exp"` // seconds
	Data       string  `json:"dat"`
	Tags       *string `json:"tag"`
	ReplyTo    string  `json:"ret"`
	Schema     string  `json:"shm"`
	Now        int64   `json:"now"`
}

// OutgoingResponse is pushed by a service to QueueReply (or the request's
// ReplyTo). The peer reads it with DecodeOutgoingResponse.
type OutgoingResponse struct {
	Version     int     `json:"ver"`
	Ref         string  `json:"ref"`
	Data        string  `json:"dat"`
	Destination string  `json:"dst"`
	Schema      string  `json:"shm"`
	Now         int64   `json:"now"`
	Error       *Error  `json:"err"`
	payload     decoded // set by DecodeOutgoingResponse
}

// IncomingResponse is pushed by the peer to the client's ReplyTo queue.
type IncomingResponse struct {
	Version int    `json:"ver"`
	Ref     string `json:"ref"`
	Data    string `json:"dat"`
	Source  string `json:"src"`
	Schema  string `json:"shm"`
	Now     int64  `json:"now"`
	Error   *Error `json:"err"`
}

// Error is an error answer.
type Error struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("rmb error %d: %s", e.Code, e.Message) }

// Payload decodes Data.
func (r *IncomingResponse) Payload() ([]byte, error) { return decode(r.Data) }

// Payload decodes Data.
func (r *IncomingRequest) Payload() ([]byte, error) { return decode(r.Data) }

// Payload decodes Data; after DecodeOutgoingRequest it returns what that
// decoded.
func (r *OutgoingRequest) Payload() ([]byte, error) { return r.payload.get(r.Data) }

// Payload decodes Data; after DecodeOutgoingResponse it returns what that
// decoded.
func (r *OutgoingResponse) Payload() ([]byte, error) { return r.payload.get(r.Data) }

func decode(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("redisapi: dat is not standard base64: %w", err)
	}
	return b, nil
}

func encode(b []byte) string { return EncodeData(b) }

// EncodeData returns b in standard base64, as the dat field carries
// payloads. Unlike base64.StdEncoding.EncodeToString it allocates the
// text once, not twice (the string shares the buffer it was encoded
// into, which nothing else holds).
func EncodeData(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	buf := make([]byte, base64.StdEncoding.EncodedLen(len(b)))
	base64.StdEncoding.Encode(buf, b)
	return unsafe.String(&buf[0], len(buf))
}

// DeadLetter is an entry of QueueDeadLetter: a message the peer could not
// parse or deliver, kept verbatim with the reason so nothing is lost
// silently. `rmb deadletter` lists, shows, requeues and drops them.
type DeadLetter struct {
	Queue   string    `json:"queue"`             // where the message came from (or was going)
	Message string    `json:"message"`           // the original message, verbatim
	Reason  string    `json:"reason"`            // why it was not handled
	Dst     uint32    `json:"dst,omitempty"`     // the destination that failed, if one
	Time    time.Time `json:"time"`              // when it was dead-lettered
	Code    uint32    `json:"code,omitempty"`    // RMB error code, if one
	Ref     string    `json:"ref,omitempty"`     // the client's ref, if known
	Ret     string    `json:"ret,omitempty"`     // the client's ret queue, if known
	UID     string    `json:"uid,omitempty"`     // envelope uid, if one was made
	Details string    `json:"details,omitempty"` // anything else
}
