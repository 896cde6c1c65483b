package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// lookupTimeout bounds one registrar lookup.
const lookupTimeout = 5 * time.Second

// authenticate checks the token of a connection request (PROTOCOL.md §4):
// the entire raw query string is the JWT. It answers the session key, or the
// HTTP status and reason to refuse with: 400 for a missing or malformed
// token, 401 for a token that is expired, too long-lived, issued in the
// future, of an unknown twin or badly signed, 503 when the registrar cannot
// be asked.
func (r *Relay) authenticate(req *http.Request) (SessionKey, int, error) {
	raw := req.URL.RawQuery
	if raw == "" {
		return SessionKey{}, http.StatusBadRequest, errors.New("missing token: the query string must be the JWT")
	}
	tok, err := identity.ParseToken(raw)
	if err != nil {
		return SessionKey{}, http.StatusBadRequest, fmt.Errorf("malformed token: %w", err)
	}
	if err := tok.CheckTime(r.opts.Now(), r.opts.TokenPolicy); err != nil {
		return SessionKey{}, http.StatusUnauthorized, fmt.Errorf("invalid token: %w", err)
	}
	ctx, cancel := context.WithTimeout(req.Context(), lookupTimeout)
	defer cancel()
	twin, err := r.opts.Directory.Twin(ctx, tok.Claims.Twin)
	if errors.Is(err, registrar.ErrNotFound) {
		return SessionKey{}, http.StatusUnauthorized, fmt.Errorf("unknown twin %d", tok.Claims.Twin)
	}
	if err != nil {
		r.log.Warn("registrar lookup failed", "twin", tok.Claims.Twin, "err", err)
		return SessionKey{}, http.StatusServiceUnavailable, errors.New("twin lookup failed, try again later")
	}
	if err := tok.Verify(twin.PublicKey); err != nil {
		return SessionKey{}, http.StatusUnauthorized, errors.New("invalid token: bad signature")
	}
	r.domainCheck.connected(req, tok.Claims.Twin, twin.Relays)
	if tok.Claims.Session == broadcastSID {
		return SessionKey{}, http.StatusBadRequest, errors.New(`session id "*" is reserved: it addresses every session of a twin`)
	}
	return SessionKey{Twin: tok.Claims.Twin, SID: tok.Claims.Session}, 0, nil
}
