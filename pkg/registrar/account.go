package registrar

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MaxRelays is how many relay domains an account may list.
const MaxRelays = 16

// Errors callers act on. The stores return them, the server maps them to
// 404 and 409, and the client maps those statuses back to them.
var (
	ErrNotFound = errors.New("registrar: not found")
	// ErrNotCached is CachedTwin's answer when the client's cache holds
	// nothing fresh for the twin.
	ErrNotCached = errors.New("registrar: twin not cached")
	ErrExists    = errors.New("registrar: public key already registered")
)

// Twin is what the rest of RMB needs to know about a twin. Values returned
// by Client.Twin are shared by all callers and must not be modified.
type Twin struct {
	ID        uint32
	PublicKey []byte   // 32-byte ed25519 or sr25519 signing key
	Relays    []string // relay domains, "host" or "host:port"
	E2EKey    []byte   // 33-byte compressed secp256k1 key, nil if none
}

// clone returns a deep copy of t.
func (t *Twin) clone() Twin {
	return Twin{
		ID:        t.ID,
		PublicKey: bytes.Clone(t.PublicKey),
		Relays:    slices.Clone(t.Relays),
		E2EKey:    bytes.Clone(t.E2EKey),
	}
}

// Account is a twin as the registrar stores it.
type Account struct {
	Twin
	CreatedAt time.Time
	UpdatedAt time.Time
	// Seq is the change sequence number of the account's latest create or
	// update.
	Seq uint64
}

func (a *Account) clone() *Account {
	c := *a
	c.Twin = a.Twin.clone()
	return &c
}

// AccountUpdate lists what an update changes. A nil field is left as it is;
// an empty, non-nil one clears the field.
type AccountUpdate struct {
	Relays []string
	E2EKey []byte
}

// apply changes a as u says, stamping UpdatedAt with now, and reports
// whether anything changed.
func (u AccountUpdate) apply(a *Account, now time.Time) bool {
	changed := false
	if u.Relays != nil && !slices.Equal(u.Relays, a.Relays) {
		a.Relays = slices.Clone(u.Relays)
		changed = true
	}
	if u.E2EKey != nil && !bytes.Equal(u.E2EKey, a.E2EKey) {
		a.E2EKey = nil
		if len(u.E2EKey) > 0 {
			a.E2EKey = bytes.Clone(u.E2EKey)
		}
		changed = true
	}
	if changed {
		a.UpdatedAt = now
	}
	return changed
}

// Change says that a twin was created or updated at sequence number Seq.
type Change struct {
	Seq    uint64 `json:"seq"`
	TwinID uint32 `json:"twin_id"`
}

// stamp is the time stores record: UTC, whole seconds, so that it survives
// a round trip through RFC 3339 unchanged.
func stamp() time.Time {
	return time.Now().UTC().Truncate(time.Second)
}

// checkRelays validates a list of relay domains.
func checkRelays(relays []string) error {
	if len(relays) > MaxRelays {
		return fmt.Errorf("too many relays: %d, at most %d allowed", len(relays), MaxRelays)
	}
	for i, r := range relays {
		if err := checkRelay(r); err != nil {
			return fmt.Errorf("relay %q: %w", r, err)
		}
		if slices.Contains(relays[:i], r) {
			return fmt.Errorf("relay %q is listed twice", r)
		}
	}
	return nil
}

// checkRelay validates one relay domain: a DNS name or IP address with an
// optional port, no scheme and no path ("r1.example", "10.0.0.1:8080",
// "[::1]:443").
func checkRelay(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	host := s
	if strings.Contains(s, ":") {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return errors.New("want host or host:port (IPv6 addresses in brackets)")
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("bad port %q", port)
		}
		host = h
		if strings.HasPrefix(s, "[") {
			if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
				return fmt.Errorf("bad IPv6 address %q", host)
			}
			return nil
		}
	}
	if _, err := netip.ParseAddr(host); err == nil {
		if strings.Contains(host, ":") {
			return errors.New("IPv6 addresses need brackets and a port")
		}
		return nil
	}
	return checkHostname(host)
}

// checkHostname accepts DNS names made of letters, digits and inner hyphens.
func checkHostname(h string) error {
	if len(h) == 0 || len(h) > 253 {
		return errors.New("host name must be 1 to 253 characters")
	}
	for label := range strings.SplitSeq(h, ".") {
		if len(label) == 0 || len(label) > 63 {
			return errors.New("each host name label must be 1 to 63 characters")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("host name labels may not start or end with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("character %q is not allowed in a host name", c)
			}
		}
	}
	return nil
}
