package registrar

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

// testMnemonic is the identity of the compatibility vectors.
const testMnemonic = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"

var keyTypes = []identity.KeyType{identity.Ed25519, identity.Sr25519}

// vectorIdentity returns the vector identity of the given key type.
func vectorIdentity(t testing.TB, kt identity.KeyType) *identity.Identity {
	t.Helper()
	id, err := identity.FromSecret(testMnemonic, kt)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// newIdentity returns a fresh identity.
func newIdentity(t testing.TB, kt identity.KeyType) *identity.Identity {
	t.Helper()
	m, err := identity.NewMnemonic()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.FromSecret(m, kt)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serverStore, when set, opens the store of every server startServer
// starts without one (TestServerStores runs the server tests over each
// store); nil means the server's default MemStore.
var serverStore func(t testing.TB) Store

// startServer runs a registrar over real HTTP. wrap, if not nil, wraps the
// handler (to count or break requests).
func startServer(t testing.TB, opts *Options, wrap func(http.Handler) http.Handler) (*httptest.Server, *Server) {
	t.Helper()
	if serverStore != nil && (opts == nil || opts.Store == nil) {
		o := Options{}
		if opts != nil {
			o = *opts
		}
		o.Store = serverStore(t)
		opts = &o
	}
	s := NewServer(opts)
	h := s.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	return hs, s
}

// createBody is a correctly signed registration of id at time ts.
func createBody(id *identity.Identity, ts int64, relays []string) createRequest {
	pub := b64.EncodeToString(id.PublicKey())
	return createRequest{
		Timestamp: ts,
		PublicKey: pub,
		Signature: b64.EncodeToString(id.SignRaw(createMessage(ts, pub))),
		Relays:    relays,
		E2EKey:    b64.EncodeToString(id.E2EPublicKey()),
	}
}

// answer is an HTTP answer: status, headers and body.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorText returns the "error" field of a JSON error answer, failing the
// test if the answer is not one.
func (a answer) errorText(t testing.TB) string {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer has Content-Type %q, want application/json; body %s", ct, a.body)
	}
	var e map[string]any
	if err := json.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("error answer is not JSON: %v; body %s", err, a.body)
	}
	msg, _ := e["error"].(string)
	if msg == "" {
		t.Fatalf("error answer has no error text: %s", a.body)
	}
	return msg
}

// account decodes an account answer.
func (a answer) account(t testing.TB) accountJSON {
	t.Helper()
	var j accountJSON
	if err := json.Unmarshal(a.body, &j); err != nil {
		t.Fatalf("account answer is not JSON: %v; body %s", err, a.body)
	}
	return j
}

// call sends a request; body is sent as is if it is a string or []byte and
// as JSON otherwise (nil for none).
func call(t testing.TB, method, url string, body any, header http.Header) answer {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: data}
}

// register creates the account of id through the API and returns it.
func register(t testing.TB, base string, id *identity.Identity, relays ...string) accountJSON {
	t.Helper()
	a := call(t, http.MethodPost, base+"/v1/accounts", createBody(id, time.Now().Unix(), relays), nil)
	if a.status != http.StatusCreated {
		t.Fatalf("register: status %d, body %s", a.status, a.body)
	}
	return a.account(t)
}

// authHeaderFor is the X-Auth header of signer claiming twin, signed at at.
func authHeaderFor(signer *identity.Identity, twin uint32, at time.Time) http.Header {
	return http.Header{authHeader: {newAuth(signer, twin, at)}}
}

// counter counts the requests to one path (all paths if path is "").
type counter struct {
	path string
	n    atomic.Int64
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.path == "" || r.URL.Path == c.path {
			c.n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
