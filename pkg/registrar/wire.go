package registrar

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

// The JSON bodies of the account API (PROTOCOL.md §8), shared by the server
// and the client. Binary fields are standard base64 with padding.

// createRequest is the body of POST /v1/accounts.
type createRequest struct {
	Timestamp int64    `json:"timestamp"`
	PublicKey string   `json:"public_key"`
	Signature string   `json:"signature"` // raw 64 bytes over createMessage
	Relays    []string `json:"relays"`
	E2EKey    string   `json:"rmb_enc_key"`
}

// updateRequest is the body of PATCH /v1/accounts/{twin_id}. An absent (or
// null) field is left unchanged.
type updateRequest struct {
	Relays *[]string `json:"relays,omitempty"`
	E2EKey *string   `json:"rmb_enc_key,omitempty"`
}

// accountJSON is an account as the API shows it.
type accountJSON struct {
	TwinID    uint32    `json:"twin_id"`
	PublicKey string    `json:"public_key"`
	Relays    []string  `json:"relays"`
	E2EKey    string    `json:"rmb_enc_key"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// changesResponse is the body of GET /v1/accounts/changes.
type changesResponse struct {
	Seq     uint64   `json:"seq"`
	Changes []Change `json:"changes"`
}

// errorResponse is the body of every error answer.
type errorResponse struct {
	Error string `json:"error"`
}

func newAccountJSON(a *Account) accountJSON {
	relays := a.Relays
	if relays == nil {
		relays = []string{} // always a list on the wire, never null
	}
	return accountJSON{
		TwinID:    a.ID,
		PublicKey: b64.EncodeToString(a.PublicKey),
		Relays:    relays,
		E2EKey:    b64.EncodeToString(a.E2EKey),
		CreatedAt: a.CreatedAt,
		UpdatedAt: a.UpdatedAt,
	}
}

// twin checks an account answer and converts it.
func (j *accountJSON) twin() (*Twin, error) {
	if j.TwinID == 0 {
		return nil, errors.New("account has no twin_id")
	}
	pub, err := decodeKey("public_key", j.PublicKey, identity.PublicKeySize)
	if err != nil {
		return nil, err
	}
	e2e, err := decodeE2EKey(j.E2EKey)
	if err != nil {
		return nil, err
	}
	return &Twin{ID: j.TwinID, PublicKey: pub, Relays: j.Relays, E2EKey: e2e}, nil
}

var b64 = base64.StdEncoding

// decodeKey decodes a base64 field that must hold exactly size bytes.
func decodeKey(field, s string, size int) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("%s is missing", field)
	}
	b, err := b64.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not valid base64", field)
	}
	if len(b) != size {
		return nil, fmt.Errorf("%s is %d bytes, want %d", field, len(b), size)
	}
	return b, nil
}

// decodeE2EKey decodes an rmb_enc_key field; "" means no key (nil).
func decodeE2EKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	return decodeKey("rmb_enc_key", s, identity.E2EPublicKeySize)
}

// createMessage is the text a registration signs: "<timestamp>:<public_key
// as sent>".
func createMessage(timestamp int64, publicKey string) []byte {
	return []byte(strconv.FormatInt(timestamp, 10) + ":" + publicKey)
}

// authHeader is the header that carries an update's proof of ownership.
const authHeader = "X-Auth"

// newAuth builds an X-Auth value for twin at now:
// base64("<unix ts>:<twin>") ":" base64(raw signature of "<unix ts>:<twin>").
func newAuth(id *identity.Identity, twin uint32, now time.Time) string {
	text := strconv.FormatInt(now.Unix(), 10) + ":" + strconv.FormatUint(uint64(twin), 10)
	return b64.EncodeToString([]byte(text)) + ":" + b64.EncodeToString(id.SignRaw([]byte(text)))
}

// challenge is a parsed X-Auth header; its signature is not checked yet.
type challenge struct {
	time      time.Time
	twin      uint32
	text      []byte // the signed "<unix ts>:<twin>"
	signature []byte
}

// parseAuth reads an X-Auth header value.
func parseAuth(h string) (*challenge, error) {
	if h == "" {
		return nil, errors.New("missing X-Auth header")
	}
	enc, encSig, ok := strings.Cut(h, ":")
	if !ok {
		return nil, errors.New(`malformed X-Auth header: want base64("<unix ts>:<twin_id>") ":" base64(signature)`)
	}
	text, err := b64.DecodeString(enc)
	if err != nil {
		return nil, errors.New("malformed X-Auth header: challenge is not valid base64")
	}
	sig, err := b64.DecodeString(encSig)
	if err != nil {
		return nil, errors.New("malformed X-Auth header: signature is not valid base64")
	}
	if len(sig) != identity.RawSignatureSize {
		return nil, fmt.Errorf("malformed X-Auth header: signature is %d bytes, want %d", len(sig), identity.RawSignatureSize)
	}
	ts, twin, ok := strings.Cut(string(text), ":")
	if !ok {
		return nil, errors.New(`malformed X-Auth header: challenge is not "<unix ts>:<twin_id>"`)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, errors.New("malformed X-Auth header: challenge timestamp is not a number")
	}
	id, err := strconv.ParseUint(twin, 10, 32)
	if err != nil || id == 0 {
		return nil, errors.New("malformed X-Auth header: challenge twin id is not a twin id")
	}
	return &challenge{time: time.Unix(sec, 0), twin: uint32(id), text: text, signature: sig}, nil
}
