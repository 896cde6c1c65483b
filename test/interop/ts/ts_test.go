// Package tsinterop runs the published TypeScript direct client,
// @threefold/rmb_direct_client (the exact version pinned in
// package-lock.json, installed with `npm ci`), against this repository's
// registrar, relay and peer: an in-process registrar, a relay serving wss://
// with a test certificate, a real redis-server and rmb-peer library in
// front of a service on the Redis API. The client's twin lookups go to
// chain.js, a tfchain stand-in answering from the registrar; the client is
// configured only through its constructor. See docs/compatibility.md.
package tsinterop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

const command = "interop.echo"

// npmCI installs the pinned client into node_modules next to this file.
func npmCI(t *testing.T, ctx context.Context) {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the TypeScript interop test needs Node.js and npm (`make deps` / scripts/deps.sh installs nodejs and npm)", tool)
		}
	}
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--prefer-offline")
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in test/interop/ts failed (%v): the npm registry or a filled npm cache is needed to install @threefold/rmb_direct_client as pinned in package-lock.json\n%s", err, out)
	}
}

type result struct {
	KeyType string          `json:"keyType"`
	Session string          `json:"session"`
	Twin    uint32          `json:"twin"`
	Pong    bool            `json:"pong"`
	Answer  json.RawMessage `json:"answer"`
}

func TestPublishedTypeScriptClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	npmCI(t, ctx)

	regSrv := httptest.NewServer(registrar.NewServer(nil).Handler())
	t.Cleanup(regSrv.Close)
	reg := registrar.NewClient(regSrv.URL, nil)

	// The relay serves wss:// only: the client derives the relay it
	// registers from its relay URL by stripping "wss://", and would try to
	// update its twin on chain for any other scheme.
	tlsSrv := httptest.NewUnstartedServer(nil)
	relayAddr := tlsSrv.Listener.Addr().String()
	// Default options: the token policy accepts the client's 1000 s tokens.
	rl, err := relay.New(&relay.Options{Domains: []string{relayAddr}, Directory: reg})
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv.Config.Handler = rl.Handler()
	tlsSrv.StartTLS()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		rl.Shutdown(sctx)
		tlsSrv.Close()
	})
	relayURL := "wss://" + relayAddr
	caFile := filepath.Join(t.TempDir(), "relay-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(tlsSrv.Certificate())

	// The service: a peer on Redis and an echo handler behind it.
	rs := redistest.Start(t, nil)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { rdb.Close() })
	sm, _ := identity.NewMnemonic()
	sid, err := identity.FromSecret(sm, identity.Sr25519)
	if err != nil {
		t.Fatal(err)
	}
	p, err := peer.New(&peer.Options{
		Identity: sid, Relays: []string{relayURL}, Registrar: reg, Redis: rdb,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}},
	})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { pcancel(); wg.Wait() })
	wg.Add(2)
	go func() { defer wg.Done(); p.Run(pctx) }()
	select {
	case <-p.Ready():
	case <-ctx.Done():
		t.Fatal("peer did not find or register its twin")
	}
	// Ready means registered; wait for its relay session too, so the
	// client's request does not race it.
	if err := wait.For(ctx, 60*time.Second, func() error {
		for _, s := range rl.Sessions() {
			if s.Twin == p.Twin() {
				return nil
			}
		}
		return fmt.Errorf("twin %d has no session on the relay", p.Twin())
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]string{} // src -> data
	go func() {
		defer wg.Done()
		redisapi.NewClient(rdb).Serve(pctx, command, func(_ context.Context, r *redisapi.IncomingRequest, b []byte) ([]byte, error) {
			mu.Lock()
			seen[r.Source] = string(b)
			mu.Unlock()
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return nil, fmt.Errorf("not JSON: %v", err)
			}
			return json.Marshal(map[string]any{"echo": v, "src": r.Source})
		}, nil)
	}()

	// The client's twins, one per key type, registered on our relay with
	// their e2e keys: what the client checks its chain twin against.
	type tcase struct {
		KeyType  string         `json:"keyType"`
		Mnemonic string         `json:"mnemonic"`
		Session  string         `json:"session"`
		Payload  map[string]any `json:"payload"`
		twin     uint32
	}
	var cases []*tcase
	for _, kt := range []identity.KeyType{identity.Ed25519, identity.Sr25519} {
		m, _ := identity.NewMnemonic()
		id, err := identity.FromSecret(m, kt)
		if err != nil {
			t.Fatal(err)
		}
		tw, err := reg.Register(ctx, id, []string{relayAddr})
		if err != nil {
			t.Fatal(err)
		}
		name := string(kt)
		cases = append(cases, &tcase{KeyType: name, Mnemonic: m, Session: "ts-" + name,
			Payload: map[string]any{"hello": "from the TypeScript client", "key": name}, twin: tw.ID})
	}
	cfg, _ := json.Marshal(map[string]any{
		"registrar": regSrv.URL, "relay": relayURL, "destination": p.Twin(), "command": command, "cases": cases,
	})

	cmd := exec.CommandContext(ctx, "node", "client.js")
	cmd.Env = append(os.Environ(), "INTEROP_CONFIG="+string(cfg), "NODE_EXTRA_CA_CERTS="+caFile)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node client.js: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var results []result
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
		if !ok {
			continue // the client's own log lines
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("client printed %q: %v\nstderr:\n%s", sc.Text(), err, stderr.String())
		}
		results = append(results, r)
	}
	if len(results) != len(cases) {
		t.Fatalf("client answered %d of %d cases\nstdout:\n%s\nstderr:\n%s", len(results), len(cases), stdout.String(), stderr.String())
	}
	for i, c := range cases {
		r := results[i]
		t.Logf("%s twin %d session %s: pong %v, answer %s", r.KeyType, r.Twin, r.Session, r.Pong, r.Answer)
		src := strconv.FormatUint(uint64(c.twin), 10) + ":" + c.Session
		if r.KeyType != c.KeyType || r.Twin != c.twin || r.Session != c.Session {
			t.Errorf("case %d: client reported %+v, want key type %s, twin %d, session %s", i, r, c.KeyType, c.twin, c.Session)
		}
		if !r.Pong {
			t.Errorf("%s: no pong from the relay", c.KeyType)
		}
		var got struct {
			Echo map[string]any `json:"echo"`
			Src  string         `json:"src"`
		}
		if err := json.Unmarshal(r.Answer, &got); err != nil {
			t.Fatalf("%s: answer %s: %v", c.KeyType, r.Answer, err)
		}
		if got.Src != src || fmt.Sprint(got.Echo) != fmt.Sprint(c.Payload) {
			t.Errorf("%s: answer %s, want the echo of %v from %s", c.KeyType, r.Answer, c.Payload, src)
		}
		mu.Lock()
		data, ok := seen[src]
		mu.Unlock()
		if !ok || !strings.Contains(data, "from the TypeScript client") {
			t.Errorf("%s: the service saw %q from %s (all: %v)", c.KeyType, data, src, seen)
		}
	}
}
