package registrar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/pkg/identity"
)

// Client defaults.
const (
	DefaultCacheTTL         = 60 * time.Second
	DefaultNegativeCacheTTL = 5 * time.Second
	DefaultRequestTimeout   = 10 * time.Second
	DefaultMaxCacheEntries  = 100_000
	DefaultMaxNegEntries    = 10_000
)

// Change-feed polling of Watch.
const (
	watchWait       = DefaultChangesWait
	watchMinBackoff = 100 * time.Millisecond
	watchMaxBackoff = 5 * time.Second
)

// maxAnswerBytes bounds what the client reads of an answer.
const maxAnswerBytes = 1 << 20

// ClientOptions configure a Client. The zero value (or nil) means all
// defaults.
type ClientOptions struct {
	// HTTPClient sends the requests. Default: a client of its own over
	// http.DefaultTransport.
	HTTPClient *http.Client
	// Logger receives change-feed failures. Default: discard.
	Logger *slog.Logger
	// CacheTTL is how long Twin keeps an answer. Default 60 seconds.
	CacheTTL time.Duration
	// NegativeCacheTTL is how long Twin remembers that a twin does not
	// exist. Default 5 seconds.
	NegativeCacheTTL time.Duration
	// RequestTimeout bounds each request (change-feed polls get their wait
	// on top). Default 10 seconds.
	RequestTimeout time.Duration
	// MaxCacheEntries bounds the cache of twins; when it is full, expired
	// entries and then one arbitrary entry per new twin are dropped, never
	// many at once. Default 100000.
	MaxCacheEntries int
	// MaxNegativeEntries bounds the cache of twins that do not exist (the
	// registrar answered 404 or another 4xx that is not 408 or 429). It is
	// apart from the cache of twins: lookups of made-up ids (a relay looks
	// a token's twin up before it can check the signature) fill this one
	// and evict nothing else. Default 10000.
	MaxNegativeEntries int
}

// Client talks to a registrar. It is safe for concurrent use.
type Client struct {
	base       string
	baseErr    error // CheckURL of base: every request fails with it
	hc         *http.Client
	log        *slog.Logger
	ttl        time.Duration
	negTTL     time.Duration
	timeout    time.Duration
	maxEntries int
	maxNeg     int

	flights singleflight.Group // concurrent misses, keyed by twin id

	mu        sync.Mutex            // guards the following
	cache     map[uint32]cacheEntry // twins that exist
	neg       map[uint32]cacheEntry // twins that do not
	epoch     uint64                // bumped by every invalidation; fetches that span one are not cached
	lastSweep time.Time             // when putLocked last looked for expired twins
}

// cacheEntry is a twin (twin set) or the error saying it does not exist
// (err set).
type cacheEntry struct {
	twin    *Twin
	err     error
	expires time.Time
}

// StatusError is an error answer of the registrar. It wraps ErrNotFound for
// 404 and ErrExists for 409.
type StatusError struct {
	StatusCode int
	Message    string // the server's "error" text
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Unwrap maps the status to the sentinel errors callers act on.
func (e *StatusError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrExists
	}
	return nil
}

// NewClient returns a client of the registrar at baseURL (scheme, host and
// an optional path prefix; the client appends /v1/...). opts may be nil.
func NewClient(baseURL string, opts *ClientOptions) *Client {
	var o ClientOptions
	if opts != nil {
		o = *opts
	}
	c := &Client{
		base:       strings.TrimRight(baseURL, "/"),
		hc:         o.HTTPClient,
		log:        o.Logger,
		ttl:        o.CacheTTL,
		negTTL:     o.NegativeCacheTTL,
		timeout:    o.RequestTimeout,
		maxEntries: o.MaxCacheEntries,
		maxNeg:     o.MaxNegativeEntries,
		cache:      make(map[uint32]cacheEntry),
		neg:        make(map[uint32]cacheEntry),
	}
	if err := CheckURL(baseURL); err != nil {
		c.baseErr = fmt.Errorf("registrar URL %q: %w", baseURL, err)
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.ttl <= 0 {
		c.ttl = DefaultCacheTTL
	}
	if c.negTTL <= 0 {
		c.negTTL = DefaultNegativeCacheTTL
	}
	if c.timeout <= 0 {
		c.timeout = DefaultRequestTimeout
	}
	if c.maxEntries <= 0 {
		c.maxEntries = DefaultMaxCacheEntries
	}
	if c.maxNeg <= 0 {
		c.maxNeg = DefaultMaxNegEntries
	}
	return c
}

// CheckURL reports whether base can be a registrar's base URL: http:// or
// https://, with a host. The error names the form wanted, built from base:
// "127.0.0.1:8080" is answered "want a URL like http://127.0.0.1:8080".
func CheckURL(base string) error {
	return cliconf.CheckURL(base, "http", "https")
}

// Twin returns a twin by id, from the cache when it can. A twin that does
// not exist is an error wrapping ErrNotFound. Concurrent calls for the same
// uncached twin share one request. The result is shared: do not modify it.
func (c *Client) Twin(ctx context.Context, id uint32) (*Twin, error) {
	now := time.Now()
	e, ok := c.cached(id)
	if ok && now.Before(e.expires) {
		return e.twin, e.err
	}
	// The request is not tied to the first caller's cancellation: the
	// others still want the answer. Each caller waits only as long as its
	// own ctx allows.
	flight := c.flights.DoChan(flightKey(id), func() (any, error) {
		return c.fetch(context.WithoutCancel(ctx), id)
	})
	select {
	case r := <-flight:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Twin), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("registrar: look up twin %d: %w", id, ctx.Err())
	}
}

// CachedTwin is Twin without asking the registrar: what the cache holds
// for id, or ErrNotCached when it holds nothing fresh. It never blocks.
func (c *Client) CachedTwin(id uint32) (*Twin, error) {
	e, ok := c.cached(id)
	if !ok || !time.Now().Before(e.expires) {
		return nil, ErrNotCached
	}
	return e.twin, e.err
}

// cached returns the entry of id, of either cache.
func (c *Client) cached(id uint32) (cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[id]; ok {
		return e, true
	}
	e, ok := c.neg[id]
	return e, ok
}

func flightKey(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

// fetch asks the registrar for a twin and caches the answer, unless the
// twin was invalidated meanwhile.
func (c *Client) fetch(ctx context.Context, id uint32) (*Twin, error) {
	c.mu.Lock()
	epoch := c.epoch
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	t, err := c.lookup(ctx, url.Values{"twin_id": {flightKey(id)}})
	if err == nil && t.ID != id {
		err = fmt.Errorf("asked for twin %d, got twin %d", id, t.ID)
	}
	if err != nil {
		err = fmt.Errorf("registrar: look up twin %d: %w", id, err)
	}
	var se *StatusError
	switch {
	case err == nil:
		c.put(id, epoch, cacheEntry{twin: t, expires: time.Now().Add(c.ttl)})
	case errors.Is(err, ErrNotFound):
		c.put(id, epoch, cacheEntry{err: err, expires: time.Now().Add(c.negTTL)})
	case errors.As(err, &se) && se.StatusCode >= 400 && se.StatusCode < 500 &&
		se.StatusCode != http.StatusRequestTimeout && se.StatusCode != http.StatusTooManyRequests:
		// The registrar will not give this twin (400 for an id it does
		// not take, say): as good as 404, and cached like it, or every
		// envelope to it would cost a request.
		err = fmt.Errorf("registrar: look up twin %d: %w (%w)", id, ErrNotFound, se)
		c.put(id, epoch, cacheEntry{err: err, expires: time.Now().Add(c.negTTL)})
	}
	return t, err
}

// put caches e for id if nothing was invalidated since epoch.
func (c *Client) put(id uint32, epoch uint64, e cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != epoch {
		return
	}
	c.putLocked(id, e)
}

func (c *Client) putLocked(id uint32, e cacheEntry) {
	if e.err != nil {
		delete(c.cache, id)
		if _, ok := c.neg[id]; !ok && len(c.neg) >= c.maxNeg {
			now := time.Now()
			for k, old := range c.neg {
				if now.After(old.expires) {
					delete(c.neg, k)
				}
			}
			// Still full: drop a tenth of the negative entries (only
			// those), so the next inserts do not scan again.
			for k := range c.neg {
				if len(c.neg) < c.maxNeg*9/10 {
					break
				}
				delete(c.neg, k)
			}
		}
		c.neg[id] = e
		return
	}
	delete(c.neg, id)
	if _, ok := c.cache[id]; !ok && len(c.cache) >= c.maxEntries {
		// Expired entries go first, looked for at most once a second
		// (a scan of a full cache per insert would cost more than the
		// lookups). When the cache is full of live twins, one arbitrary
		// entry makes room: a flood of lookups churns the cache one
		// entry at a time, never empties much of it at once.
		if now := time.Now(); now.Sub(c.lastSweep) >= time.Second {
			c.lastSweep = now
			for k, old := range c.cache {
				if now.After(old.expires) {
					delete(c.cache, k)
				}
			}
		}
		for k := range c.cache {
			if len(c.cache) < c.maxEntries {
				break
			}
			delete(c.cache, k)
		}
	}
	c.cache[id] = e
}

// remember caches a twin the registrar just answered for a write.
func (c *Client) remember(t *Twin) {
	c.mu.Lock()
	c.epoch++ // a lookup in flight may carry the old state
	c.putLocked(t.ID, cacheEntry{twin: t, expires: time.Now().Add(c.ttl)})
	c.mu.Unlock()
	c.flights.Forget(flightKey(t.ID))
}

// Invalidate drops a twin from the cache; the next Twin call asks the
// registrar.
func (c *Client) Invalidate(id uint32) {
	c.mu.Lock()
	delete(c.cache, id)
	delete(c.neg, id)
	c.epoch++
	c.mu.Unlock()
	c.flights.Forget(flightKey(id))
}

// invalidateAll empties the cache.
func (c *Client) invalidateAll() {
	c.mu.Lock()
	clear(c.cache)
	clear(c.neg)
	c.epoch++
	c.mu.Unlock()
}

// TwinByPublicKey returns the twin holding a signing key, asking the
// registrar every time. A key nobody holds is an error wrapping
// ErrNotFound.
func (c *Client) TwinByPublicKey(ctx context.Context, pub []byte) (*Twin, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	t, err := c.lookup(ctx, url.Values{"public_key": {b64.EncodeToString(pub)}})
	if err != nil {
		return nil, fmt.Errorf("registrar: look up public key %s: %w", b64.EncodeToString(pub), err)
	}
	return t, nil
}

// lookup runs GET /v1/accounts with query.
func (c *Client) lookup(ctx context.Context, query url.Values) (*Twin, error) {
	var a accountJSON
	if err := c.do(ctx, http.MethodGet, "/v1/accounts", query, nil, nil, http.StatusOK, &a); err != nil {
		return nil, err
	}
	return a.twin()
}

// Register creates the account of id, reachable on relays, with id's e2e
// key. Registering a key twice is an error wrapping ErrExists.
func (c *Client) Register(ctx context.Context, id *identity.Identity, relays []string) (*Twin, error) {
	if relays == nil {
		relays = []string{}
	}
	ts := time.Now().Unix()
	pub := b64.EncodeToString(id.PublicKey())
	req := createRequest{
		Timestamp: ts,
		PublicKey: pub,
		Signature: b64.EncodeToString(id.SignRaw(createMessage(ts, pub))),
		Relays:    relays,
		E2EKey:    b64.EncodeToString(id.E2EPublicKey()),
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var a accountJSON
	if err := c.do(ctx, http.MethodPost, "/v1/accounts", nil, nil, req, http.StatusCreated, &a); err != nil {
		return nil, fmt.Errorf("registrar: register: %w", err)
	}
	t, err := a.twin()
	if err != nil {
		return nil, fmt.Errorf("registrar: register: %w", err)
	}
	c.remember(t)
	return t, nil
}

// Update changes twin's account, signing as id (which must own it).
// relays == nil leaves the relays as they are, an empty list removes them;
// e2eKey == nil leaves the e2e key, an empty one removes it.
func (c *Client) Update(ctx context.Context, id *identity.Identity, twin uint32, relays []string, e2eKey []byte) (*Twin, error) {
	var req updateRequest
	if relays != nil {
		req.Relays = &relays
	}
	if e2eKey != nil {
		k := b64.EncodeToString(e2eKey)
		req.E2EKey = &k
	}
	header := http.Header{authHeader: {newAuth(id, twin, time.Now())}}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var a accountJSON
	if err := c.do(ctx, http.MethodPatch, "/v1/accounts/"+flightKey(twin), nil, header, req, http.StatusOK, &a); err != nil {
		return nil, fmt.Errorf("registrar: update twin %d: %w", twin, err)
	}
	t, err := a.twin()
	if err != nil {
		return nil, fmt.Errorf("registrar: update twin %d: %w", twin, err)
	}
	c.remember(t)
	return t, nil
}

// Watch follows the registrar's change feed and drops every changed twin
// from the cache, so cached answers are as fresh as one long poll. It
// retries with backoff when the registrar fails, and returns ctx.Err()
// once ctx is done. Run one Watch per Client.
//
// A client whose base URL fails CheckURL logs why once and returns that
// error at once: no retry can succeed.
func (c *Client) Watch(ctx context.Context) error {
	if c.baseErr != nil {
		c.log.Error("registrar: change feed not followed", "err", c.baseErr)
		return c.baseErr
	}
	var (
		since    uint64
		started  bool
		failures int
	)
	for {
		query := url.Values{}
		if started {
			query.Set("since", strconv.FormatUint(since, 10))
			query.Set("wait", strconv.Itoa(int(watchWait/time.Second)))
		}
		var resp changesResponse
		pollCtx, cancel := context.WithTimeout(ctx, watchWait+c.timeout)
		err := c.do(pollCtx, http.MethodGet, "/v1/accounts/changes", query, nil, nil, http.StatusOK, &resp)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			failures++
			d := backoff(failures)
			c.log.Warn("registrar: change feed failed", "err", err, "retry_in", d)
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			continue
		}
		failures = 0
		if !started || resp.Seq < since {
			// Answers cached before we followed the feed, or before the
			// registrar went back in time, may be stale.
			c.invalidateAll()
			started = true
		} else {
			for _, ch := range resp.Changes {
				c.Invalidate(ch.TwinID)
			}
		}
		since = resp.Seq
	}
}

// backoff is the pause after the nth consecutive failure: doubling from
// watchMinBackoff up to watchMaxBackoff, with jitter.
func backoff(n int) time.Duration {
	d := watchMaxBackoff
	if n < 16 {
		d = min(watchMinBackoff<<(n-1), watchMaxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// do sends one request with in as the JSON body (if not nil) and decodes
// the answer into out if its status is want. Any other status is a
// *StatusError.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, header http.Header, in any, want int, out any) error {
	if c.baseErr != nil {
		return c.baseErr
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err // a *url.Error, naming method and URL
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return fmt.Errorf("%s %s: reading answer: %w", method, u, err)
	}
	if resp.StatusCode != want {
		return statusError(resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding answer: %w", method, u, err)
	}
	return nil
}

// statusError reads an error answer: the "error" field of a JSON body, or
// the start of whatever else the body is.
func statusError(status int, body []byte) *StatusError {
	var e errorResponse
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return &StatusError{StatusCode: status, Message: e.Error}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = "no message"
	}
	return &StatusError{StatusCode: status, Message: msg}
}
