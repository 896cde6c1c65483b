package registrar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/identity"
)

func TestCreateAccount(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	for i, kt := range keyTypes {
		t.Run(string(kt), func(t *testing.T) {
			id := vectorIdentity(t, kt)
			before := time.Now().Add(-time.Second)
			a := call(t, http.MethodPost, hs.URL+"/v1/accounts", createBody(id, time.Now().Unix(), []string{"r1.example", "r2.example:8080"}), nil)
			if a.status != http.StatusCreated {
				t.Fatalf("status %d, body %s", a.status, a.body)
			}
			if ct := a.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			got := a.account(t)
			if want := uint32(i + 1); got.TwinID != want {
				t.Errorf("twin_id %d, want %d (sequential from 1)", got.TwinID, want)
			}
			if got.PublicKey != b64.EncodeToString(id.PublicKey()) {
				t.Errorf("public_key %s", got.PublicKey)
			}
			if got.E2EKey != b64.EncodeToString(id.E2EPublicKey()) {
				t.Errorf("rmb_enc_key %s", got.E2EKey)
			}
			if !slices.Equal(got.Relays, []string{"r1.example", "r2.example:8080"}) {
				t.Errorf("relays %q", got.Relays)
			}
			if got.CreatedAt.Before(before) || !got.CreatedAt.Equal(got.UpdatedAt) {
				t.Errorf("created_at %s updated_at %s", got.CreatedAt, got.UpdatedAt)
			}
		})
	}
}

// TestAccountJSON pins the wire form of an account: field names, base64,
// RFC 3339 times, relays as a list even when empty.
func TestAccountJSON(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	id := vectorIdentity(t, identity.Ed25519)
	body := createBody(id, time.Now().Unix(), nil)
	body.E2EKey = ""
	a := call(t, http.MethodPost, hs.URL+"/api/v1/accounts", body, nil)
	if a.status != http.StatusCreated {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"created_at", "public_key", "relays", "rmb_enc_key", "twin_id", "updated_at"}; !slices.Equal(keys, want) {
		t.Errorf("fields %q, want %q", keys, want)
	}
	if m["twin_id"] != 1.0 || m["public_key"] != "NFBx2lXl3M76qkQDOUFe+fJmMzijj32g3yG+WrTgVe8=" || m["rmb_enc_key"] != "" {
		t.Errorf("account %s", a.body)
	}
	if r, ok := m["relays"].([]any); !ok || len(r) != 0 {
		t.Errorf("relays %v, want []", m["relays"])
	}
	if _, err := time.Parse(time.RFC3339, m["created_at"].(string)); err != nil {
		t.Errorf("created_at: %v", err)
	}
}

func TestCreateAccountErrors(t *testing.T) {
	hs, _ := startServer(t, &Options{MaxBodyBytes: 1024}, nil)
	existing := vectorIdentity(t, identity.Sr25519)
	register(t, hs.URL, existing)

	now := time.Now().Unix()
	fresh := newIdentity(t, identity.Ed25519)
	other := newIdentity(t, identity.Sr25519)
	valid := func(edit func(*createRequest)) createRequest {
		b := createBody(fresh, now, []string{"r1.example"})
		edit(&b)
		return b
	}
	tests := []struct {
		name   string
		body   any
		status int
		msg    string // part of the error text
	}{
		{"duplicate key", createBody(existing, now, nil), http.StatusConflict, "already registered"},
		{"signed by another key", valid(func(b *createRequest) {
			b.Signature = b64.EncodeToString(other.SignRaw(createMessage(now, b.PublicKey)))
		}), http.StatusUnauthorized, "signature"},
		{"signature over another timestamp", valid(func(b *createRequest) {
			b.Signature = b64.EncodeToString(fresh.SignRaw(createMessage(now-1, b.PublicKey)))
		}), http.StatusUnauthorized, "signature"},
		{"stale timestamp", createBody(fresh, now-120, nil), http.StatusBadRequest, "timestamp"},
		{"future timestamp", createBody(fresh, now+120, nil), http.StatusBadRequest, "timestamp"},
		{"missing timestamp", valid(func(b *createRequest) { b.Timestamp = 0 }), http.StatusBadRequest, "timestamp"},
		{"public key not base64", valid(func(b *createRequest) { b.PublicKey = "not base64!" }), http.StatusBadRequest, "public_key"},
		{"public key too short", valid(func(b *createRequest) { b.PublicKey = b64.EncodeToString(make([]byte, 31)) }), http.StatusBadRequest, "public_key is 31 bytes"},
		{"public key missing", valid(func(b *createRequest) { b.PublicKey = "" }), http.StatusBadRequest, "public_key is missing"},
		{"signature wrong length", valid(func(b *createRequest) { b.Signature = b64.EncodeToString(make([]byte, 65)) }), http.StatusBadRequest, "signature is 65 bytes"},
		{"e2e key wrong length", valid(func(b *createRequest) { b.E2EKey = b64.EncodeToString(make([]byte, 32)) }), http.StatusBadRequest, "rmb_enc_key"},
		{"relay with scheme", valid(func(b *createRequest) { b.Relays = []string{"wss://r1.example"} }), http.StatusBadRequest, "relay"},
		{"relay with path", valid(func(b *createRequest) { b.Relays = []string{"r1.example/ws"} }), http.StatusBadRequest, "relay"},
		{"relay bad port", valid(func(b *createRequest) { b.Relays = []string{"r1.example:99999"} }), http.StatusBadRequest, "port"},
		{"relay empty", valid(func(b *createRequest) { b.Relays = []string{""} }), http.StatusBadRequest, "relay"},
		{"relay twice", valid(func(b *createRequest) { b.Relays = []string{"a.example", "a.example"} }), http.StatusBadRequest, "twice"},
		{"too many relays", valid(func(b *createRequest) {
			b.Relays = nil
			for i := range MaxRelays + 1 {
				b.Relays = append(b.Relays, fmt.Sprintf("r%d.example", i))
			}
		}), http.StatusBadRequest, "too many relays"},
		{"malformed JSON", `{"timestamp": 1,`, http.StatusBadRequest, "invalid JSON"},
		{"wrong type", `{"timestamp": "now"}`, http.StatusBadRequest, `"timestamp" must be a number`},
		{"not an object", `[1, 2]`, http.StatusBadRequest, "want an object"},
		{"empty body", ``, http.StatusBadRequest, "empty"},
		{"oversized body", `{"relays": ["` + strings.Repeat("a", 2000) + `"]}`, http.StatusRequestEntityTooLarge, "larger than 1024 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := call(t, http.MethodPost, hs.URL+"/v1/accounts", tt.body, nil)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", a.status, tt.status, a.body)
			}
			if msg := a.errorText(t); !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q does not mention %q", msg, tt.msg)
			}
		})
	}

	// None of the failures registered anything: the fresh key is free, and
	// unknown fields are ignored.
	body, _ := json.Marshal(createBody(fresh, time.Now().Unix(), []string{"r1.example", "10.0.0.1:8080", "[::1]:443", "localhost"}))
	body = append(body[:len(body)-1], `,"extra":{"ignored":true}}`...)
	a := call(t, http.MethodPost, hs.URL+"/v1/accounts", body, nil)
	if a.status != http.StatusCreated {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	if got := a.account(t).TwinID; got != 2 {
		t.Errorf("twin_id %d, want 2", got)
	}
}

func TestLookup(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	ed := register(t, hs.URL, vectorIdentity(t, identity.Ed25519), "r1.example")
	sr := register(t, hs.URL, vectorIdentity(t, identity.Sr25519), "r2.example")
	// A key whose base64 has a '+', to check query escaping both ways.
	plusKey := "NFBx2lXl3M76qkQDOUFe+fJmMzijj32g3yG+WrTgVe8="
	if ed.PublicKey != plusKey {
		t.Fatalf("vector key changed: %s", ed.PublicKey)
	}

	tests := []struct {
		name   string
		query  string
		status int
		want   *accountJSON
	}{
		{"ed25519 by id", "twin_id=1", http.StatusOK, &ed},
		{"sr25519 by id", "twin_id=2", http.StatusOK, &sr},
		{"by key", "public_key=" + url.QueryEscape(plusKey), http.StatusOK, &ed},
		{"by key, '+' unescaped", "public_key=" + plusKey, http.StatusOK, &ed},
		{"by sr25519 key", "public_key=" + url.QueryEscape(sr.PublicKey), http.StatusOK, &sr},
		{"unknown id", "twin_id=3", http.StatusNotFound, nil},
		{"unknown key", "public_key=" + url.QueryEscape(b64.EncodeToString(make([]byte, 32))), http.StatusNotFound, nil},
		{"neither", "", http.StatusBadRequest, nil},
		{"both", "twin_id=1&public_key=" + url.QueryEscape(plusKey), http.StatusBadRequest, nil},
		{"id zero", "twin_id=0", http.StatusBadRequest, nil},
		{"id not a number", "twin_id=abc", http.StatusBadRequest, nil},
		{"id too big", "twin_id=4294967296", http.StatusBadRequest, nil},
		{"key not base64", "public_key=%21%21", http.StatusBadRequest, nil},
		{"key too short", "public_key=AAAA", http.StatusBadRequest, nil},
	}
	for _, prefix := range []string{"/v1", "/api/v1"} {
		for _, tt := range tests {
			t.Run(prefix+"/"+tt.name, func(t *testing.T) {
				a := call(t, http.MethodGet, hs.URL+prefix+"/accounts?"+tt.query, nil, nil)
				if a.status != tt.status {
					t.Fatalf("status %d, want %d; body %s", a.status, tt.status, a.body)
				}
				if tt.want == nil {
					a.errorText(t)
					return
				}
				got := a.account(t)
				if got.TwinID != tt.want.TwinID || got.PublicKey != tt.want.PublicKey || !slices.Equal(got.Relays, tt.want.Relays) || !got.CreatedAt.Equal(tt.want.CreatedAt) {
					t.Errorf("got %+v, want %+v", got, *tt.want)
				}
			})
		}
	}
}

func TestUpdateAccount(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	owners := map[identity.KeyType]*identity.Identity{}
	twins := map[identity.KeyType]uint32{}
	for _, kt := range keyTypes {
		owners[kt] = vectorIdentity(t, kt)
		twins[kt] = register(t, hs.URL, owners[kt], "r1.example").TwinID
	}
	now := time.Now()
	newE2E := newIdentity(t, identity.Ed25519).E2EPublicKey()

	for _, kt := range keyTypes {
		owner, twin := owners[kt], twins[kt]
		other := identity.Ed25519
		if kt == other {
			other = identity.Sr25519
		}
		intruder, intruderTwin := owners[other], twins[other]
		path := fmt.Sprintf("%s/v1/accounts/%d", hs.URL, twin)

		tests := []struct {
			name   string
			path   string
			header http.Header
			body   string
			status int
			relays []string // after the call
			e2e    []byte   // after the call, nil for unchanged
		}{
			{"relays only", path, authHeaderFor(owner, twin, now), `{"relays": ["r2.example", "r3.example:443"]}`, http.StatusOK, []string{"r2.example", "r3.example:443"}, nil},
			{"e2e key only", path, authHeaderFor(owner, twin, now), `{"rmb_enc_key": "` + b64.EncodeToString(newE2E) + `"}`, http.StatusOK, []string{"r2.example", "r3.example:443"}, newE2E},
			{"nothing", path, authHeaderFor(owner, twin, now), `{"unknown": 1}`, http.StatusOK, []string{"r2.example", "r3.example:443"}, newE2E},
			{"both, on /api/v1", strings.Replace(path, "/v1/", "/api/v1/", 1), authHeaderFor(owner, twin, now), `{"relays": ["r4.example"], "rmb_enc_key": "` + b64.EncodeToString(owner.E2EPublicKey()) + `"}`, http.StatusOK, []string{"r4.example"}, owner.E2EPublicKey()},
			{"signed by another twin's key", path, authHeaderFor(intruder, twin, now), `{"relays": ["evil.example"]}`, http.StatusUnauthorized, nil, nil},
			{"challenge for another twin", path, authHeaderFor(intruder, intruderTwin, now), `{"relays": ["evil.example"]}`, http.StatusForbidden, nil, nil},
			{"expired challenge", path, authHeaderFor(owner, twin, now.Add(-61*time.Second)), `{"relays": ["old.example"]}`, http.StatusUnauthorized, nil, nil},
			{"challenge from the future", path, authHeaderFor(owner, twin, now.Add(2*time.Minute)), `{"relays": ["new.example"]}`, http.StatusUnauthorized, nil, nil},
			{"missing X-Auth", path, nil, `{"relays": ["x.example"]}`, http.StatusUnauthorized, nil, nil},
			{"X-Auth without separator", path, http.Header{authHeader: {"abc"}}, `{}`, http.StatusUnauthorized, nil, nil},
			{"X-Auth not base64", path, http.Header{authHeader: {"!!:!!"}}, `{}`, http.StatusUnauthorized, nil, nil},
			{"X-Auth short signature", path, http.Header{authHeader: {b64.EncodeToString(fmt.Appendf(nil, "%d:%d", now.Unix(), twin)) + ":" + b64.EncodeToString(make([]byte, 10))}}, `{}`, http.StatusUnauthorized, nil, nil},
			{"X-Auth challenge not ts:twin", path, http.Header{authHeader: {b64.EncodeToString([]byte("hello")) + ":" + b64.EncodeToString(make([]byte, 64))}}, `{}`, http.StatusUnauthorized, nil, nil},
			{"unknown twin", fmt.Sprintf("%s/v1/accounts/99", hs.URL), authHeaderFor(owner, 99, now), `{}`, http.StatusNotFound, nil, nil},
			{"twin id not a number", hs.URL + "/v1/accounts/abc", authHeaderFor(owner, twin, now), `{}`, http.StatusBadRequest, nil, nil},
			{"malformed JSON", path, authHeaderFor(owner, twin, now), `{"relays": `, http.StatusBadRequest, nil, nil},
			{"relays not a list", path, authHeaderFor(owner, twin, now), `{"relays": "r1.example"}`, http.StatusBadRequest, nil, nil},
			{"invalid relay", path, authHeaderFor(owner, twin, now), `{"relays": ["bad relay"]}`, http.StatusBadRequest, nil, nil},
			{"e2e key wrong length", path, authHeaderFor(owner, twin, now), `{"rmb_enc_key": "AAAA"}`, http.StatusBadRequest, nil, nil},
			{"oversized body", path, authHeaderFor(owner, twin, now), `{"relays": ["` + strings.Repeat("a", DefaultMaxBodyBytes) + `"]}`, http.StatusRequestEntityTooLarge, nil, nil},
		}
		for _, tt := range tests {
			t.Run(string(kt)+"/"+tt.name, func(t *testing.T) {
				before := call(t, http.MethodGet, fmt.Sprintf("%s/v1/accounts?twin_id=%d", hs.URL, twin), nil, nil).account(t)
				a := call(t, http.MethodPatch, tt.path, tt.body, tt.header)
				if a.status != tt.status {
					t.Fatalf("status %d, want %d; body %s", a.status, tt.status, a.body)
				}
				after := call(t, http.MethodGet, fmt.Sprintf("%s/v1/accounts?twin_id=%d", hs.URL, twin), nil, nil).account(t)
				if tt.status != http.StatusOK {
					a.errorText(t)
					if !slices.Equal(after.Relays, before.Relays) || after.E2EKey != before.E2EKey || !after.UpdatedAt.Equal(before.UpdatedAt) {
						t.Errorf("rejected update changed the account: %+v -> %+v", before, after)
					}
					return
				}
				got := a.account(t)
				if got.TwinID != twin || got.PublicKey != before.PublicKey || !got.CreatedAt.Equal(before.CreatedAt) {
					t.Errorf("update changed identity fields: %+v -> %+v", before, got)
				}
				if !slices.Equal(got.Relays, tt.relays) || !slices.Equal(after.Relays, tt.relays) {
					t.Errorf("relays %q (stored %q), want %q", got.Relays, after.Relays, tt.relays)
				}
				wantE2E := before.E2EKey
				if tt.e2e != nil {
					wantE2E = b64.EncodeToString(tt.e2e)
				}
				if got.E2EKey != wantE2E || after.E2EKey != wantE2E {
					t.Errorf("rmb_enc_key %s (stored %s), want %s", got.E2EKey, after.E2EKey, wantE2E)
				}
			})
		}
	}
}

// TestUpdateClears checks that empty values clear a field and that absent
// ones keep it.
func TestUpdateClears(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	id := vectorIdentity(t, identity.Sr25519)
	twin := register(t, hs.URL, id, "r1.example").TwinID
	path := fmt.Sprintf("%s/v1/accounts/%d", hs.URL, twin)

	a := call(t, http.MethodPatch, path, `{"relays": [], "rmb_enc_key": null}`, authHeaderFor(id, twin, time.Now()))
	if a.status != http.StatusOK {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	if got := a.account(t); len(got.Relays) != 0 || got.E2EKey != b64.EncodeToString(id.E2EPublicKey()) {
		t.Errorf("after clearing relays: %+v", got)
	}
	a = call(t, http.MethodPatch, path, `{"rmb_enc_key": ""}`, authHeaderFor(id, twin, time.Now()))
	if a.status != http.StatusOK {
		t.Fatalf("status %d, body %s", a.status, a.body)
	}
	if got := a.account(t); got.E2EKey != "" || got.Relays == nil {
		t.Errorf("after clearing the e2e key: %+v", got)
	}
}

func TestRoutes(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/healthz", http.StatusOK, ""},
		{http.MethodGet, "/nope", http.StatusNotFound, ""},
		{http.MethodGet, "/v2/accounts", http.StatusNotFound, ""},
		{http.MethodDelete, "/v1/accounts", http.StatusMethodNotAllowed, "GET, POST"},
		{http.MethodGet, "/v1/accounts/1", http.StatusMethodNotAllowed, "PATCH"},
		{http.MethodPost, "/api/v1/accounts/changes", http.StatusMethodNotAllowed, "GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			a := call(t, tt.method, hs.URL+tt.path, nil, nil)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", a.status, tt.status, a.body)
			}
			if a.header.Get("Content-Type") != "application/json" || !json.Valid(a.body) {
				t.Errorf("answer is not JSON: %q %s", a.header.Get("Content-Type"), a.body)
			}
			if tt.status >= 400 {
				a.errorText(t)
			}
			if got := a.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

// changesAnswer decodes a change-feed answer.
func changesAnswer(t testing.TB, a answer) changesResponse {
	t.Helper()
	if a.status != http.StatusOK {
		t.Fatalf("changes: status %d, body %s", a.status, a.body)
	}
	var r changesResponse
	if err := json.Unmarshal(a.body, &r); err != nil {
		t.Fatalf("changes: %v; body %s", err, a.body)
	}
	if r.Changes == nil {
		t.Fatalf("changes is null, want a list: %s", a.body)
	}
	return r
}

func TestChanges(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	feed := hs.URL + "/v1/accounts/changes"

	if r := changesAnswer(t, call(t, http.MethodGet, feed, nil, nil)); r.Seq != 0 || len(r.Changes) != 0 {
		t.Errorf("empty registrar: %+v", r)
	}
	ids := make([]*identity.Identity, 3)
	for i := range ids {
		ids[i] = newIdentity(t, keyTypes[i%2])
		register(t, hs.URL, ids[i], "r1.example")
	}
	// Twin 1 changes again: it moves to the end, listed once.
	a := call(t, http.MethodPatch, hs.URL+"/v1/accounts/1", `{"relays": ["r9.example"]}`, authHeaderFor(ids[0], 1, time.Now()))
	if a.status != http.StatusOK {
		t.Fatalf("update: %d %s", a.status, a.body)
	}
	// An update that changes nothing is not a change.
	a = call(t, http.MethodPatch, hs.URL+"/v1/accounts/2", `{"relays": ["r1.example"]}`, authHeaderFor(ids[1], 2, time.Now()))
	if a.status != http.StatusOK {
		t.Fatalf("update: %d %s", a.status, a.body)
	}

	tests := []struct {
		query string
		want  changesResponse
	}{
		{"since=0", changesResponse{Seq: 4, Changes: []Change{{2, 2}, {3, 3}, {4, 1}}}},
		{"since=2&wait=5", changesResponse{Seq: 4, Changes: []Change{{3, 3}, {4, 1}}}},
		{"since=4&wait=0", changesResponse{Seq: 4, Changes: []Change{}}},
		{"", changesResponse{Seq: 4, Changes: []Change{}}},                  // no since: now
		{"since=100&wait=30", changesResponse{Seq: 4, Changes: []Change{}}}, // ahead: at once
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			start := time.Now()
			r := changesAnswer(t, call(t, http.MethodGet, feed+"?"+tt.query, nil, nil))
			if r.Seq != tt.want.Seq || !slices.Equal(r.Changes, tt.want.Changes) {
				t.Errorf("got %+v, want %+v", r, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answer took %s, want at once", d)
			}
		})
	}
	for _, q := range []string{"since=-1", "since=x", "wait=-1", "wait=soon"} {
		t.Run(q, func(t *testing.T) {
			a := call(t, http.MethodGet, feed+"?"+q, nil, nil)
			if a.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %s", a.status, a.body)
			}
			a.errorText(t)
		})
	}
}

// TestChangesLongPoll checks that a waiting poll returns when an account
// changes, and times out empty otherwise.
func TestChangesLongPoll(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	id := vectorIdentity(t, identity.Ed25519)
	twin := register(t, hs.URL, id, "r1.example").TwinID
	feed := hs.URL + "/v1/accounts/changes"

	start := time.Now()
	r := changesAnswer(t, call(t, http.MethodGet, feed+"?since=1&wait=1", nil, nil))
	if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
		t.Errorf("idle poll took %s, want about 1s", d)
	}
	if r.Seq != 1 || len(r.Changes) != 0 {
		t.Errorf("idle poll: %+v", r)
	}

	done := make(chan changesResponse, 1)
	go func() {
		a := call(t, http.MethodGet, feed+"?since=1&wait=30", nil, nil)
		var r changesResponse
		json.Unmarshal(a.body, &r)
		done <- r
	}()
	select {
	case r := <-done:
		t.Fatalf("poll returned before any change: %+v", r)
	case <-time.After(200 * time.Millisecond):
	}
	patched := time.Now()
	a := call(t, http.MethodPatch, fmt.Sprintf("%s/v1/accounts/%d", hs.URL, twin), `{"relays": ["r2.example"]}`, authHeaderFor(id, twin, time.Now()))
	if a.status != http.StatusOK {
		t.Fatalf("update: %d %s", a.status, a.body)
	}
	select {
	case r := <-done:
		if d := time.Since(patched); d > time.Second {
			t.Errorf("poll returned %s after the update", d)
		}
		if want := []Change{{Seq: 2, TwinID: twin}}; r.Seq != 2 || !slices.Equal(r.Changes, want) {
			t.Errorf("poll answered %+v, want seq 2 and %+v", r, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiting poll did not return after an update")
	}
}

// TestCloseReleasesPolls checks that Server.Close answers waiting polls, so
// graceful shutdown does not wait out the long poll.
func TestCloseReleasesPolls(t *testing.T) {
	hs, s := startServer(t, nil, nil)
	done := make(chan answer, 1)
	go func() { done <- call(t, http.MethodGet, hs.URL+"/v1/accounts/changes?since=0&wait=60", nil, nil) }()
	select {
	case a := <-done:
		t.Fatalf("poll returned early: %d %s", a.status, a.body)
	case <-time.After(100 * time.Millisecond):
	}
	s.Close()
	select {
	case a := <-done:
		if r := changesAnswer(t, a); r.Seq != 0 || len(r.Changes) != 0 {
			t.Errorf("got %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not release the waiting poll")
	}
}

// TestRestart checks that a bolt-backed registrar keeps accounts, twin ids
// and the change sequence across a restart.
func TestRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registrar.db")
	ed, sr := vectorIdentity(t, identity.Ed25519), vectorIdentity(t, identity.Sr25519)

	store, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	hs, s := startServer(t, &Options{Store: store}, nil)
	first := register(t, hs.URL, ed, "r1.example")
	register(t, hs.URL, sr, "r2.example")
	if a := call(t, http.MethodPatch, hs.URL+"/v1/accounts/1", `{"relays": ["r3.example"]}`, authHeaderFor(ed, 1, time.Now())); a.status != http.StatusOK {
		t.Fatalf("update: %d %s", a.status, a.body)
	}
	s.Close()
	hs.Close()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store, err = OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	hs, _ = startServer(t, &Options{Store: store}, nil)
	got := call(t, http.MethodGet, hs.URL+"/v1/accounts?twin_id=1", nil, nil).account(t)
	if got.PublicKey != first.PublicKey || !slices.Equal(got.Relays, []string{"r3.example"}) || !got.CreatedAt.Equal(first.CreatedAt) || got.E2EKey != first.E2EKey {
		t.Errorf("after restart twin 1 is %+v", got)
	}
	if a := call(t, http.MethodGet, hs.URL+"/v1/accounts?public_key="+url.QueryEscape(b64.EncodeToString(sr.PublicKey())), nil, nil); a.status != http.StatusOK || a.account(t).TwinID != 2 {
		t.Errorf("after restart lookup by key: %d %s", a.status, a.body)
	}
	if a := call(t, http.MethodPost, hs.URL+"/v1/accounts", createBody(ed, time.Now().Unix(), nil), nil); a.status != http.StatusConflict {
		t.Errorf("re-registering after restart: %d %s", a.status, a.body)
	}
	third := register(t, hs.URL, newIdentity(t, identity.Ed25519))
	if third.TwinID != 3 {
		t.Errorf("next twin id after restart is %d, want 3", third.TwinID)
	}
	r := changesAnswer(t, call(t, http.MethodGet, hs.URL+"/v1/accounts/changes?since=0", nil, nil))
	if want := []Change{{2, 2}, {3, 1}, {4, 3}}; r.Seq != 4 || !slices.Equal(r.Changes, want) {
		t.Errorf("changes after restart %+v, want seq 4 and %+v", r, want)
	}
}

// TestBodyLimitDefault checks the 64 KiB default: a body just under it is
// read, one over it is refused.
func TestBodyLimitDefault(t *testing.T) {
	hs, _ := startServer(t, nil, nil)
	id := newIdentity(t, identity.Ed25519)
	body, _ := json.Marshal(createBody(id, time.Now().Unix(), nil))
	pad := func(n int) []byte {
		b := bytes.Clone(body[:len(body)-1])
		b = append(b, `,"pad":"`...)
		b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	if a := call(t, http.MethodPost, hs.URL+"/v1/accounts", pad(DefaultMaxBodyBytes+1), nil); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("64 KiB + 1: status %d, body %s", a.status, a.body)
	}
	if a := call(t, http.MethodPost, hs.URL+"/v1/accounts", pad(DefaultMaxBodyBytes), nil); a.status != http.StatusCreated {
		t.Errorf("64 KiB: status %d, body %s", a.status, a.body)
	}
}

func TestCheckRelay(t *testing.T) {
	good := []string{"r1.example", "R1.Example", "localhost", "relay-1.grid.tf", "r1.example:443", "10.0.0.1", "10.0.0.1:8080", "[::1]:443", "[2001:db8::1]:8080", "xn--bcher-kva.example"}
	bad := []string{"", "wss://r1.example", "r1.example/", "r1 example", "-r1.example", "r1-.example", "r1..example", ".r1.example", "r1.example.", "r1.example:", "r1.example:0", "r1.example:65536", "r1.example:http", "::1", "[::1]", "[fe80::1%eth0]:443", "[10.0.0.1]:80", "r1_relay.example", strings.Repeat("a", 64) + ".example", strings.Repeat("a.", 127) + "example"}
	for _, s := range good {
		if err := checkRelay(s); err != nil {
			t.Errorf("checkRelay(%q) = %v, want ok", s, err)
		}
	}
	for _, s := range bad {
		if err := checkRelay(s); err == nil {
			t.Errorf("checkRelay(%q) = ok, want an error", s)
		}
	}
}
