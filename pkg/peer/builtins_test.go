package peer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

func call1(t *testing.T, from *testPeer, to uint32, cmd string, data []byte) peer.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rs, err := from.Call(ctx, []uint32{to}, cmd, data, &peer.CallOptions{TTL: 20 * time.Second, Schema: "text/plain"})
	if err != nil || len(rs) != 1 {
		t.Fatalf("%s: %v %v", cmd, rs, err)
	}
	return rs[0]
}

// Every built-in is answered by the peer itself, across federated relays,
// without reaching an in-process handler or a Redis service; rmb.info
// and rmb.stats only for the peer's own twin and the twins the policy
// names.
func TestBuiltinCommands(t *testing.T) {
	s := newStack(t, 2)
	a := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(0) })
	b := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(1) })
	c := s.newPeer(func(o *peer.Options) { o.Relays = s.relayURLs(1) })
	// A service for every built-in name, which must never be reached.
	for _, cmd := range []string{"rmb.test", "rmb.echo", "rmb.info", "rmb.stats", "rmb.version"} {
		b.Handle(cmd, func(context.Context, *peer.Request) ([]byte, error) {
			t.Errorf("handler for %s reached", cmd)
			return nil, nil
		})
	}

	if r := call1(t, a, b.Twin(), "rmb.test", nil); r.Err != nil || string(r.Data) != `{"ok":true}` {
		t.Fatalf("rmb.test: %+v", r)
	}
	if r := call1(t, a, b.Twin(), "rmb.version", nil); r.Err != nil || string(r.Data) != `"`+peer.Version+`"` {
		t.Fatalf("rmb.version: %+v", r)
	}
	payload := bytes.Repeat([]byte("0123456789"), 1000)
	if r := call1(t, a, b.Twin(), "rmb.echo", payload); r.Err != nil || !bytes.Equal(r.Data, payload) || r.Schema != "text/plain" {
		t.Fatalf("rmb.echo: err %v, %d bytes, schema %q", r.Err, len(r.Data), r.Schema)
	}
	// Nothing reached Redis either.
	for _, cmd := range []string{"rmb.test", "rmb.echo", "rmb.version"} {
		if n := b.rdb.LLen(context.Background(), "msgbus."+cmd).Val(); n != 0 {
			t.Errorf("msgbus.%s holds %d", cmd, n)
		}
	}

	// rmb.info and rmb.stats: refused to another twin by default (the
	// policy's default does not open them) ...
	for _, cmd := range []string{"rmb.info", "rmb.stats"} {
		r := call1(t, a, b.Twin(), cmd, nil)
		if r.Err == nil || r.Err.Code != envelope.CodeDenied || !strings.Contains(r.Err.Message, "policy") {
			t.Fatalf("%s from another twin: %+v", cmd, r)
		}
	}
	// ... answered to the peer's own twin ...
	r := call1(t, b, b.Twin(), "rmb.info", nil)
	var info peer.Info
	if r.Err != nil || json.Unmarshal(r.Data, &info) != nil {
		t.Fatalf("rmb.info to self: %+v", r)
	}
	if info.Implementation != "rmb-go" || info.Twin != b.Twin() || info.Version != peer.Version || !info.Redis ||
		len(info.Relays) != 1 || info.Relays[0].URL != s.relays[1].url || !info.Relays[0].Connected || info.UptimeSeconds < 0 {
		t.Fatalf("rmb.info: %+v", info)
	}
	// ... and to the twins a rule names.
	pol, err := peer.ParsePolicy([]byte(fmt.Sprintf("rules:\n  - commands: [\"rmb.info\", \"rmb.stats\"]\n    allow: [%d]\n", a.Twin())))
	if err != nil {
		t.Fatal(err)
	}
	b.ReloadPolicy(pol)
	r = call1(t, a, b.Twin(), "rmb.stats", nil)
	var stats map[string]float64
	if r.Err != nil || json.Unmarshal(r.Data, &stats) != nil {
		t.Fatalf("rmb.stats: %+v", r)
	}
	if stats["rmb_peer_requests_received_total"] < 5 || stats[`rmb_peer_builtin_requests_total{command="rmb.test"}`] != 1 ||
		stats[`rmb_peer_dropped_total{reason="builtin_denied"}`] != 2 {
		t.Fatalf("rmb.stats: %v", stats)
	}
	if r := call1(t, a, b.Twin(), "rmb.info", nil); r.Err != nil {
		t.Fatalf("rmb.info allowed by policy: %+v", r)
	}
	// The rule names a only: c is refused (the rule has an allow list).
	if r := call1(t, c, b.Twin(), "rmb.info", nil); r.Err == nil || r.Err.Code != envelope.CodeDenied {
		t.Fatalf("rmb.info from a twin the rule does not name: %+v", r)
	}
	// A deny of the policy applies to every built-in.
	pol, _ = peer.ParsePolicy([]byte(fmt.Sprintf("rules:\n  - commands: [\"rmb.*\"]\n    deny: [%d]\n", a.Twin())))
	b.ReloadPolicy(pol)
	if r := call1(t, a, b.Twin(), "rmb.test", nil); r.Err == nil || r.Err.Code != envelope.CodeDenied {
		t.Fatalf("rmb.test denied by policy: %+v", r)
	}
	if r := call1(t, c, b.Twin(), "rmb.test", nil); r.Err != nil {
		t.Fatalf("rmb.test to another twin: %+v", r)
	}
}

// rmb.echo is bounded by the envelope size limit: a payload whose answer
// would not fit is answered with an error, not dropped.
func TestBuiltinEchoBounded(t *testing.T) {
	s := newStack(t, 1)
	a, b := s.newPeer(), s.newPeer()
	// Fits in a request, but the answer (encrypted, signed) is larger.
	payload := bytes.Repeat([]byte{'x'}, envelope.DefaultMaxSize-300)
	r := call1(t, a, b.Twin(), "rmb.echo", payload)
	if r.Err == nil && !bytes.Equal(r.Data, payload) {
		t.Fatalf("rmb.echo: %d bytes back", len(r.Data))
	}
	if r.Err != nil && r.Err.Code != envelope.CodeInternal {
		t.Fatalf("rmb.echo too big: %+v", r.Err)
	}
	t.Logf("echo of %d bytes: err %v", len(payload), r.Err)
}
