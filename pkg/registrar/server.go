package registrar

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

// Defaults and bounds of the server.
const (
	DefaultTimestampWindow = 30 * time.Second
	DefaultChallengeTTL    = time.Minute
	DefaultMaxBodyBytes    = 64 << 10

	// DefaultChangesWait and MaxChangesWait bound how long a change-feed
	// request is held when nothing changes. An HTTP server in front of the
	// handler needs a write timeout above MaxChangesWait.
	DefaultChangesWait = 25 * time.Second
	MaxChangesWait     = 60 * time.Second

	maxChangesPerAnswer = 1000
)

// Options configure a Server. The zero value (or nil) means all defaults.
type Options struct {
	// Store keeps the accounts. Default: a new MemStore. The server never
	// closes it; the caller owns it.
	Store Store
	// Logger receives request failures and account changes. Default:
	// discard.
	Logger *slog.Logger
	// TimestampWindow is how far a registration timestamp may be from
	// server time, and how far an X-Auth challenge may be in the future.
	// Default 30 seconds.
	TimestampWindow time.Duration
	// ChallengeTTL is how long an X-Auth challenge stays valid. Default one
	// minute.
	ChallengeTTL time.Duration
	// MaxBodyBytes bounds request bodies; larger ones get 413. Default
	// 64 KiB.
	MaxBodyBytes int64
}

// Server serves the account API. It never listens by itself: mount Handler
// on an http.Server or an httptest.Server. All methods are safe for
// concurrent use.
type Server struct {
	store        Store
	log          *slog.Logger
	window       time.Duration
	challengeTTL time.Duration
	maxBody      int64
	handler      http.Handler

	changed     broadcaster   // fires after every create and update
	unsubscribe func()        // ends the ChangeNotifier subscription, if any
	done        chan struct{} // closed by Close
	closeOnce   sync.Once
}

// NewServer returns a server for opts (nil means defaults).
func NewServer(opts *Options) *Server {
	var o Options
	if opts != nil {
		o = *opts
	}
	s := &Server{
		store:        o.Store,
		log:          o.Logger,
		window:       o.TimestampWindow,
		challengeTTL: o.ChallengeTTL,
		maxBody:      o.MaxBodyBytes,
		changed:      broadcaster{ch: make(chan struct{})},
		done:         make(chan struct{}),
	}
	if s.store == nil {
		s.store = NewMemStore()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.window <= 0 {
		s.window = DefaultTimestampWindow
	}
	if s.challengeTTL <= 0 {
		s.challengeTTL = DefaultChallengeTTL
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if n, ok := s.store.(ChangeNotifier); ok {
		// Changes other registrars make wake this one's feed too.
		s.unsubscribe = n.OnChange(s.changed.broadcast)
	}
	s.handler = s.routes()
	return s
}

// Handler returns the HTTP handler of the API, mounted under /v1 and
// /api/v1, plus GET /healthz.
func (s *Server) Handler() http.Handler { return s.handler }

// Close answers all waiting change-feed requests at once and makes new ones
// answer without waiting, so that an http.Server can shut down gracefully.
// It does not close the Store.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		if s.unsubscribe != nil {
			s.unsubscribe()
		}
	})
	return nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, p := range []string{"/v1", "/api/v1"} {
		mux.Handle("POST "+p+"/accounts", s.wrap(s.handleCreate))
		mux.Handle("GET "+p+"/accounts", s.wrap(s.handleGet))
		mux.Handle(p+"/accounts", methodNotAllowed("GET, POST"))
		mux.Handle("GET "+p+"/accounts/changes", s.wrap(s.handleChanges))
		mux.Handle("PATCH "+p+"/accounts/{twin_id}", s.wrap(s.handleUpdate))
		mux.Handle(p+"/accounts/{twin_id}", methodNotAllowed("PATCH"))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorResponse{Error: fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

// methodNotAllowed answers 405 for a known path. /accounts/changes only
// reaches it through the {twin_id} pattern, so it names GET there.
func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := allow
		if r.PathValue("twin_id") == "changes" {
			a = "GET"
		}
		w.Header().Set("Allow", a)
		writeJSON(w, http.StatusMethodNotAllowed, errorResponse{Error: fmt.Sprintf("method %s not allowed; use %s", r.Method, a)})
	})
}

// apiError is an error answered with its status and message. Any other
// error a handler returns is answered as a 500 and logged.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// wrap turns a handler that returns an error into an http.Handler.
func (s *Server) wrap(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := h(w, r)
		if err == nil {
			return
		}
		var ae *apiError
		switch {
		case errors.As(err, &ae):
			writeJSON(w, ae.status, errorResponse{Error: ae.msg})
		case errors.Is(err, ErrUnavailable):
			// The database is away (restarting, unreachable): the caller
			// may retry; the log has the address, the answer does not.
			s.log.Warn("request failed: store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, errorResponse{Error: "account store unavailable; try again later"})
		case r.Context().Err() != nil:
			// The client is gone; nobody reads the answer.
			s.log.Debug("request abandoned", "method", r.Method, "path", r.URL.Path, "err", err)
		default:
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeJSON(w, http.StatusInternalServerError, errorResponse{Error: "internal error"})
		}
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An error here means the client went away; there is no one to tell.
	_ = json.NewEncoder(w).Encode(v)
}

// readBody reads the request body, bounded by MaxBodyBytes.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", s.maxBody)
		}
		return nil, errorf(http.StatusBadRequest, "reading request body: %v", err)
	}
	return body, nil
}

// decodeJSON parses a request body into v; unknown fields are ignored.
func decodeJSON(body []byte, v any) error {
	if len(body) == 0 {
		return errorf(http.StatusBadRequest, "request body is empty; want a JSON object")
	}
	err := json.Unmarshal(body, v)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return errorf(http.StatusBadRequest, "invalid JSON: want an object, got %s", typeErr.Value)
		}
		return errorf(http.StatusBadRequest, "invalid JSON: field %q must be %s, got %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	}
	return errorf(http.StatusBadRequest, "invalid JSON: %v", err)
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"), strings.HasPrefix(kind, "float"):
		return "a number"
	case kind == "string":
		return "a string"
	case kind == "slice", kind == "array":
		return "a list"
	case kind == "bool":
		return "a boolean"
	}
	return "an object"
}

// parseTwinID reads a twin id in decimal; 0 is not a twin id.
func parseTwinID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return 0, errorf(http.StatusBadRequest, "twin id %q is not a number from 1 to %d", s, uint32(math.MaxUint32))
	}
	return uint32(n), nil
}

// handleCreate serves POST /v1/accounts.
func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	var req createRequest
	if err := decodeJSON(body, &req); err != nil {
		return err
	}
	pub, err := decodeKey("public_key", req.PublicKey, identity.PublicKeySize)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	sig, err := decodeKey("signature", req.Signature, identity.RawSignatureSize)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	e2e, err := decodeE2EKey(req.E2EKey)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if err := checkRelays(req.Relays); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	now := time.Now()
	if skew := now.Sub(time.Unix(req.Timestamp, 0)).Abs(); skew > s.window {
		return errorf(http.StatusBadRequest, "timestamp %d is more than %s away from server time %d", req.Timestamp, s.window, now.Unix())
	}
	if err := identity.VerifyRaw(pub, createMessage(req.Timestamp, req.PublicKey), sig); err != nil {
		return errorf(http.StatusUnauthorized, `signature does not verify: want the raw ed25519 or sr25519 signature of "<timestamp>:<public_key>" by public_key`)
	}
	a, err := s.store.Create(r.Context(), Twin{PublicKey: pub, Relays: req.Relays, E2EKey: e2e})
	if errors.Is(err, ErrExists) {
		return errorf(http.StatusConflict, "public key is already registered")
	}
	if err != nil {
		return err
	}
	s.changed.broadcast()
	s.log.Info("account created", "twin", a.ID, "relays", a.Relays, "seq", a.Seq)
	writeJSON(w, http.StatusCreated, newAccountJSON(a))
	return nil
}

// handleGet serves GET /v1/accounts?twin_id=N and ?public_key=<base64>.
func (s *Server) handleGet(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var (
		a   *Account
		err error
	)
	switch {
	case q.Has("twin_id") && q.Has("public_key"):
		return errorf(http.StatusBadRequest, "give twin_id or public_key, not both")
	case q.Has("twin_id"):
		id, perr := parseTwinID(q.Get("twin_id"))
		if perr != nil {
			return perr
		}
		if a, err = s.store.Get(r.Context(), id); errors.Is(err, ErrNotFound) {
			return errorf(http.StatusNotFound, "twin %d not found", id)
		}
	case q.Has("public_key"):
		// An unescaped '+' in a query string arrives as a space.
		key := strings.ReplaceAll(q.Get("public_key"), " ", "+")
		pub, perr := decodeKey("public_key", key, identity.PublicKeySize)
		if perr != nil {
			return errorf(http.StatusBadRequest, "%v", perr)
		}
		if a, err = s.store.GetByPublicKey(r.Context(), pub); errors.Is(err, ErrNotFound) {
			return errorf(http.StatusNotFound, "no twin has public key %s", key)
		}
	default:
		return errorf(http.StatusBadRequest, "query needs twin_id or public_key")
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, newAccountJSON(a))
	return nil
}

// handleUpdate serves PATCH /v1/accounts/{twin_id}.
func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request) error {
	id, err := parseTwinID(r.PathValue("twin_id"))
	if err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	ch, err := parseAuth(r.Header.Get(authHeader))
	if err != nil {
		return errorf(http.StatusUnauthorized, "%v", err)
	}
	if ch.twin != id {
		return errorf(http.StatusForbidden, "X-Auth is signed for twin %d; only twin %d may update twin %d", ch.twin, id, id)
	}
	now := time.Now()
	if age := now.Sub(ch.time); age > s.challengeTTL {
		return errorf(http.StatusUnauthorized, "X-Auth challenge expired: it is %s old, valid for %s", age.Truncate(time.Second), s.challengeTTL)
	}
	if ahead := ch.time.Sub(now); ahead > s.window {
		return errorf(http.StatusUnauthorized, "X-Auth challenge is %s in the future", ahead.Truncate(time.Second))
	}
	a, err := s.store.Get(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		return errorf(http.StatusNotFound, "twin %d not found", id)
	}
	if err != nil {
		return err
	}
	if err := identity.VerifyRaw(a.PublicKey, ch.text, ch.signature); err != nil {
		return errorf(http.StatusUnauthorized, "X-Auth signature does not verify against the key of twin %d", id)
	}

	var req updateRequest
	if err := decodeJSON(body, &req); err != nil {
		return err
	}
	var u AccountUpdate
	if req.Relays != nil {
		u.Relays = *req.Relays
		if u.Relays == nil {
			u.Relays = []string{}
		}
		if err := checkRelays(u.Relays); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
	}
	if req.E2EKey != nil {
		if u.E2EKey, err = decodeE2EKey(*req.E2EKey); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		if u.E2EKey == nil {
			u.E2EKey = []byte{} // "" removes the key
		}
	}
	if a, err = s.store.Update(r.Context(), id, u); err != nil {
		return err
	}
	s.changed.broadcast()
	s.log.Info("account updated", "twin", a.ID, "relays", a.Relays, "seq", a.Seq)
	writeJSON(w, http.StatusOK, newAccountJSON(a))
	return nil
}

// handleChanges serves the change feed, GET /v1/accounts/changes.
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	since := uint64(math.MaxUint64) // no since: answer now with the latest seq
	if q.Has("since") {
		n, err := strconv.ParseUint(q.Get("since"), 10, 64)
		if err != nil {
			return errorf(http.StatusBadRequest, "since %q is not a sequence number", q.Get("since"))
		}
		since = n
	}
	wait := DefaultChangesWait
	if q.Has("wait") {
		n, err := strconv.ParseUint(q.Get("wait"), 10, 32)
		if err != nil {
			return errorf(http.StatusBadRequest, "wait %q is not a number of seconds", q.Get("wait"))
		}
		wait = min(time.Duration(n)*time.Second, MaxChangesWait)
	}

	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		// Take the signal before reading, so a change that lands between
		// the read and the wait still wakes us.
		changed := s.changed.wait()
		changes, latest, err := s.store.Changes(r.Context(), since, maxChangesPerAnswer)
		if err != nil {
			return err
		}
		if len(changes) > 0 {
			// When the answer is cut at the limit, the follower continues
			// from the last change it got.
			writeJSON(w, http.StatusOK, changesResponse{Seq: changes[len(changes)-1].Seq, Changes: changes})
			return nil
		}
		if since > latest || wait == 0 {
			writeJSON(w, http.StatusOK, changesResponse{Seq: latest, Changes: []Change{}})
			return nil
		}
		select {
		case <-changed:
		case <-timer.C:
			writeJSON(w, http.StatusOK, changesResponse{Seq: latest, Changes: []Change{}})
			return nil
		case <-s.done:
			writeJSON(w, http.StatusOK, changesResponse{Seq: latest, Changes: []Change{}})
			return nil
		case <-r.Context().Done():
			return r.Context().Err()
		}
	}
}

// broadcaster wakes every waiter at once: waiters take the current channel,
// broadcast closes it and installs a fresh one.
type broadcaster struct {
	mu sync.Mutex // guards ch
	ch chan struct{}
}

func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcaster) broadcast() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
}
