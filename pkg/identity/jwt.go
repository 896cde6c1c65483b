package identity

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Token errors. Relays map ErrTokenMalformed to 400 and the others to 401.
var (
	ErrTokenMalformed = errors.New("token: malformed")
	ErrTokenExpired   = errors.New("token: expired")
	ErrTokenFuture    = errors.New("token: issued in the future")
	ErrTokenLifetime  = errors.New("token: lifetime too long")
)

// MaxTokenSize bounds what ParseToken reads; real tokens are ~250 bytes.
const MaxTokenSize = 4096

// Claims are the JWT claims a twin presents to a relay (PROTOCOL.md §4).
// Field order matches the reference SDK so encodings are byte-equal.
type Claims struct {
	ExpiresAt int64  `json:"exp"`
	IssuedAt  int64  `json:"iat"`
	Session   string `json:"sid,omitempty"`
	Twin      uint32 `json:"sub"`
}

// TokenPolicy bounds the tokens a relay accepts. Zero values mean defaults.
type TokenPolicy struct {
	// MaxLifetime is the longest exp-iat accepted. Default 1 hour.
	MaxLifetime time.Duration
	// ClockSkew is how far iat may be in the future and exp in the past.
	// Default 30 seconds.
	ClockSkew time.Duration
}

func (p TokenPolicy) withDefaults() TokenPolicy {
	if p.MaxLifetime <= 0 {
		p.MaxLifetime = time.Hour
	}
	if p.ClockSkew <= 0 {
		p.ClockSkew = 30 * time.Second
	}
	return p
}

// tokenHeader is what we write; the reference SDK adds typ, the Rust peer
// does not.
var tokenHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS512","typ":"JWT"}`))

// NewToken signs a relay token for twin with the given session id (empty
// for the default session) valid from now for lifetime.
func NewToken(id *Identity, twin uint32, sid string, now time.Time, lifetime time.Duration) (string, error) {
	claims, err := json.Marshal(Claims{
		ExpiresAt: now.Add(lifetime).Unix(),
		IssuedAt:  now.Unix(),
		Session:   sid,
		Twin:      twin,
	})
	if err != nil {
		return "", err
	}
	input := tokenHeader + "." + base64.RawURLEncoding.EncodeToString(claims)
	sig := id.Sign([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// Token is a parsed, not yet verified relay token.
type Token struct {
	Claims    Claims
	Signature []byte // 65-byte type-prefixed
	input     string // header.claims, the signed bytes
}

// ParseToken decodes a token and checks its shape: three parts, header alg
// RS512 (typ absent or JWT), numeric sub, sid a string, null or absent, a
// 65-byte signature. It checks neither signature nor time.
func ParseToken(token string) (*Token, error) {
	if len(token) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrTokenMalformed)
	}
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrTokenMalformed, MaxTokenSize)
	}
	first := strings.IndexByte(token, '.')
	last := strings.LastIndexByte(token, '.')
	if first < 0 || first == last {
		return nil, fmt.Errorf("%w: want header.claims.signature", ErrTokenMalformed)
	}
	header, err := decodeSegment(token[:first])
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrTokenMalformed, err)
	}
	var h struct {
		Alg string  `json:"alg"`
		Typ *string `json:"typ"`
	}
	if err := json.Unmarshal(header, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrTokenMalformed, err)
	}
	if h.Alg != "RS512" {
		return nil, fmt.Errorf("%w: unsupported alg %q", ErrTokenMalformed, h.Alg)
	}
	if h.Typ != nil && *h.Typ != "JWT" {
		return nil, fmt.Errorf("%w: unsupported typ %q", ErrTokenMalformed, *h.Typ)
	}
	body, err := decodeSegment(token[first+1 : last])
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrTokenMalformed, err)
	}
	var c struct {
		Exp *json.Number    `json:"exp"`
		Iat *json.Number    `json:"iat"`
		Sub json.RawMessage `json:"sub"`
		Sid *string         `json:"sid"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrTokenMalformed, err)
	}
	if c.Sub == nil || c.Exp == nil {
		return nil, fmt.Errorf("%w: claims need sub and exp", ErrTokenMalformed)
	}
	t := &Token{input: token[:last]}
	sub, err := strconv.ParseUint(string(c.Sub), 10, 32)
	if err != nil || sub == 0 {
		return nil, fmt.Errorf("%w: sub %s is not a twin id", ErrTokenMalformed, c.Sub)
	}
	t.Claims.Twin = uint32(sub)
	if t.Claims.ExpiresAt, err = c.Exp.Int64(); err != nil {
		return nil, fmt.Errorf("%w: exp %q", ErrTokenMalformed, c.Exp.String())
	}
	if c.Iat != nil {
		if t.Claims.IssuedAt, err = c.Iat.Int64(); err != nil {
			return nil, fmt.Errorf("%w: iat %q", ErrTokenMalformed, c.Iat.String())
		}
	}
	if c.Sid != nil {
		t.Claims.Session = *c.Sid
	}
	if t.Signature, err = decodeSegment(token[last+1:]); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrTokenMalformed, err)
	}
	if len(t.Signature) != SignatureSize {
		return nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrTokenMalformed, len(t.Signature), SignatureSize)
	}
	return t, nil
}

// decodeSegment reads base64url, with or without padding.
func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// Verify checks the token signature against the twin's signing key.
func (t *Token) Verify(public []byte) error {
	return Verify(public, []byte(t.input), t.Signature)
}

// CheckTime applies the policy at now: not expired, not issued in the
// future, and a lifetime no longer than the policy allows. A token with no
// iat counts as issued now, so its lifetime is exp-now.
func (t *Token) CheckTime(now time.Time, p TokenPolicy) error {
	p = p.withDefaults()
	n := now.Unix()
	skew := int64(p.ClockSkew / time.Second)
	if t.Claims.ExpiresAt+skew <= n {
		return fmt.Errorf("%w at %d, now %d", ErrTokenExpired, t.Claims.ExpiresAt, n)
	}
	iat := t.Claims.IssuedAt
	if iat == 0 {
		iat = n
	}
	if iat > n+skew {
		return fmt.Errorf("%w: iat %d, now %d", ErrTokenFuture, iat, n)
	}
	if t.Claims.ExpiresAt-iat > int64(p.MaxLifetime/time.Second) {
		return fmt.Errorf("%w: %ds, at most %s allowed", ErrTokenLifetime, t.Claims.ExpiresAt-iat, p.MaxLifetime)
	}
	return nil
}
