package registrar

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

// checkAnswer fails unless rec holds a JSON answer with a 2xx or 4xx
// status, and an "error" text when it is an error.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code < 200 || rec.Code >= 500 || (rec.Code >= 300 && rec.Code < 400) {
		t.Fatalf("status %d, body %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, body %s", ct, rec.Body)
	}
	var v map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("answer is not a JSON object: %v; body %s", err, rec.Body)
	}
	if rec.Code >= 400 {
		if msg, _ := v["error"].(string); msg == "" {
			t.Fatalf("error answer %d without error text: %s", rec.Code, rec.Body)
		}
	}
}

func FuzzCreateAccount(f *testing.F) {
	ed := vectorIdentity(f, identity.Ed25519)
	sr := vectorIdentity(f, identity.Sr25519)
	now := time.Now().Unix()
	for _, body := range []any{
		createBody(ed, now, []string{"r1.example"}),
		createBody(sr, now, []string{"r1.example:8080", "[::1]:443"}),
		createBody(ed, now-3600, nil),
		createRequest{Timestamp: now, PublicKey: "AAAA", Signature: "AAAA"},
	} {
		b, err := json.Marshal(body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"timestamp": "1"}`, `{"timestamp": 1e99}`,
		`{"timestamp": -9223372036854775808}`, `{"timestamp": 9223372036854775807}`,
		`{"relays": [1]}`, `{"relays": ["a:b:c"]}`, `{"public_key": "===="}`, `{"rmb_enc_key": {}}`,
		`{"timestamp": 1,` + strings.Repeat(" ", 70000) + `}`,
	} {
		f.Add([]byte(s))
	}
	h := NewServer(&Options{Store: NewMemStore()}).Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/accounts", strings.NewReader(string(body)))
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec)
		if rec.Code == http.StatusCreated {
			var a accountJSON
			if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil || a.TwinID == 0 {
				t.Fatalf("201 without an account: %s", rec.Body)
			}
			if _, err := a.twin(); err != nil {
				t.Fatalf("201 with an invalid account: %v; %s", err, rec.Body)
			}
		}
	})
}

func FuzzUpdateAccount(f *testing.F) {
	owner := vectorIdentity(f, identity.Sr25519)
	e2e := b64.EncodeToString(owner.E2EPublicKey())
	for _, s := range []string{
		`{"relays": ["r2.example"]}`,
		`{"rmb_enc_key": "` + e2e + `"}`,
		`{"relays": [], "rmb_enc_key": ""}`,
		`{"relays": null, "rmb_enc_key": null}`,
		`{"relays": ["r1.example", "r1.example"]}`,
		`{"relays": "r1.example"}`, `{"rmb_enc_key": "AAAA"}`, `{"rmb_enc_key": 5}`,
		``, `{}`, `null`, `[]`, `{"relays": [`,
	} {
		f.Add([]byte(s))
	}
	s := NewServer(&Options{Store: NewMemStore()})
	h := s.Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/accounts", jsonBody(f, createBody(owner, time.Now().Unix(), []string{"r1.example"}))))
	if rec.Code != http.StatusCreated {
		f.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPatch, "/v1/accounts/1", strings.NewReader(string(body)))
		req.Header.Set(authHeader, newAuth(owner, 1, time.Now()))
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec)
		if rec.Code == http.StatusOK {
			var a accountJSON
			if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
				t.Fatal(err)
			}
			if a.TwinID != 1 || a.PublicKey != b64.EncodeToString(owner.PublicKey()) {
				t.Fatalf("update changed who the account is: %s", rec.Body)
			}
			if _, err := a.twin(); err != nil {
				t.Fatalf("200 with an invalid account: %v; %s", err, rec.Body)
			}
		}
	})
}

// FuzzAuthHeader feeds arbitrary X-Auth values to an update; none may pass.
func FuzzAuthHeader(f *testing.F) {
	owner := vectorIdentity(f, identity.Ed25519)
	stranger := vectorIdentity(f, identity.Sr25519)
	now := time.Now()
	for _, s := range []string{
		newAuth(stranger, 1, now),
		newAuth(owner, 1, now.Add(-time.Hour)),
		newAuth(owner, 2, now),
		"", ":", "::", "a:b", b64.EncodeToString([]byte("1:1")) + ":",
		b64.EncodeToString(fmt.Appendf(nil, "%d:1", now.Unix())) + ":" + b64.EncodeToString(make([]byte, 64)),
	} {
		f.Add(s)
	}
	h := NewServer(nil).Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/accounts", jsonBody(f, createBody(owner, now.Unix(), nil))))
	if rec.Code != http.StatusCreated {
		f.Fatalf("register: %d %s", rec.Code, rec.Body)
	}
	f.Fuzz(func(t *testing.T, auth string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPatch, "/v1/accounts/1", strings.NewReader(`{"relays": ["evil.example"]}`))
		req.Header[authHeader] = []string{auth}
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec)
		if rec.Code != http.StatusUnauthorized && rec.Code != http.StatusForbidden {
			t.Fatalf("X-Auth %q: status %d, want 401 or 403; body %s", auth, rec.Code, rec.Body)
		}
	})
}

func jsonBody(t testing.TB, v any) *strings.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReader(string(b))
}
