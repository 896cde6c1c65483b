package relay

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// loadAllow writes an allow list and loads it as a policy.
func loadAllow(t *testing.T, yaml string) (*Policy, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "allow.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return LoadPolicy(f, "")
}

// A twin restricted to source networks is refused (403, with the reason)
// from anywhere else; a reload that takes its network away closes its
// session (1008, with the reason); a twin denied broadcast gets "message
// denied by routing rules" for an envelope to connection "*".
func TestTwinAccess(t *testing.T) {
	reg := startRegistrar(t)
	ln, domain := listen(t)
	a := reg.newTwin(t, domain)
	b := reg.newTwin(t, domain)
	c := reg.newTwin(t, domain)
	p, err := loadAllow(t, `
allow: "*"
twins:
  `+itoa(a.num)+`:
    networks: [10.0.0.0/8, "2001:db8::/32"]
  `+itoa(b.num)+`:
    networks: [127.0.0.0/8]
    broadcast: false
`)
	if err != nil {
		t.Fatal(err)
	}
	tr := startRelay(t, reg, &Options{Policy: p}, ln, nil)
	code, body, _ := dialStatus(t, tr, a, "")
	if code != 403 || body != msgNetworkDenied {
		t.Fatalf("twin from a network it may not use: %d %q, want 403 %q", code, body, msgNetworkDenied)
	}
	if n := tr.counters.refused[refuseNetwork].Load(); n != 1 {
		t.Fatalf("%d network refusals counted", n)
	}
	cb := dial(t, tr, b, "")
	cc := dial(t, tr, c, "")
	waitSession(t, tr.Relay, SessionKey{Twin: c.num}, true)

	// b may not broadcast; c may.
	e := cb.send(c.num, "*", "to all")
	cb.expectError(e.Uid, msgDenied)
	cc.send(b.num, "*", "fine")
	cb.expectPayload("fine")
	cb.send(c.num, "", "one")
	cc.expectPayload("one")

	// Reload: b's network changes; b's session is closed, c's stays.
	p2, err := loadAllow(t, `
allow: "*"
twins:
  `+itoa(b.num)+`:
    networks: 192.168.0.0/16
`)
	if err != nil {
		t.Fatal(err)
	}
	tr.SetPolicy(p2)
	_, err = cb.recvWithin(20 * time.Second)
	if websocket.CloseStatus(err) != statusRevoked || !strings.Contains(err.Error(), msgNetworkDenied) {
		t.Fatalf("b after the reload: %v, want closed 1008 %q", err, msgNetworkDenied)
	}
	if code, _, _ := dialStatus(t, tr, b, ""); code != 403 {
		t.Fatalf("b reconnecting: %d, want 403", code)
	}
	// a may connect again now.
	dial(t, tr, a, "")
	cc.expectNothing(100 * time.Millisecond)
}

// Broken twin sections are refused with a clear error (a reload then keeps
// the old policy: rmb-relay applies only what LoadPolicy accepted).
func TestTwinAccessErrors(t *testing.T) {
	for yaml, want := range map[string]string{
		"twins:\n  7:\n    networks: [10.0.0.300/8]\n": "twin 7: networks: 10.0.0.300/8 is not a CIDR network",
		"twins:\n  x:\n    broadcast: false\n":         `"x" is not a twin id`,
		"twins:\n  7:\n    broadcast: no-thanks\n":     "twin 7: broadcast: want true or false",
		"twins:\n  7:\n    network: 10.0.0.0/8\n":      `twin 7: unknown key "network"`,
		"twins: [1, 2]\n":                              "twins: want a map",
		"allow: \"*\"\ntwin:\n  7: {}\n":               `unknown key "twin"`,
	} {
		_, err := loadAllow(t, yaml)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", yaml, err, want)
		}
	}
	// A single address is a /32 (/128).
	p, err := loadAllow(t, "twins:\n  7:\n    networks: 10.1.2.3\n")
	if err != nil || len(p.Twins[7].Networks) != 1 || p.Twins[7].Networks[0].Bits() != 32 {
		t.Fatalf("single address: %v %v", p, err)
	}
	// Without an allow key, a twins section restricts and allows everyone.
	if !p.Allow.Contains(99) {
		t.Fatal("twins section alone denies other twins")
	}
	// The short form (a list) still works and has no twin section.
	p, err = loadAllow(t, "- 12\n- 41\n")
	if err != nil || p.Twins != nil || !p.Allow.Contains(41) {
		t.Fatalf("short form: %v %v", p, err)
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
