package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Flags, then $RMB_*, then --config; --print-config masks secrets.
func TestConfigSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "relay.yaml")
	os.WriteFile(file, []byte("domain: [a.example, b.example]\nregistrar: http://file.example\nadmin-token: sekret\nmax-sessions-per-twin: 9\n"), 0o600)
	t.Setenv("RMB_REGISTRAR", "http://env.example")
	t.Setenv("RMB_REDIS", "redis://:hunter2@127.0.0.1:6390")
	m := NewMain()
	var out bytes.Buffer
	m.Stdout, m.Stderr = &out, &out
	if err := m.ParseFlags([]string{"--config", file, "--max-sessions-per-twin", "3", "--print-config"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("ParseFlags: %v\n%s", err, out.String())
	}
	if strings.Join(m.Domains, " ") != "a.example b.example" || m.Registrar != "http://env.example" || m.SessionsPerTwin != 3 || m.AdminToken != "sekret" {
		t.Errorf("domains %q registrar %q sessions %d", m.Domains, m.Registrar, m.SessionsPerTwin)
	}
	for _, want := range []string{`max-sessions-per-twin: "3"  # flag`, `admin-token: "xxxxx"  # ` + file, `redis: "redis://:xxxxx@127.0.0.1:6390"  # $RMB_REDIS`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "sekret") || strings.Contains(out.String(), "hunter2") {
		t.Errorf("--print-config shows a secret:\n%s", out.String())
	}
	t.Setenv("RMB_MAX_SESSIONS_PER_TWIN", "lots")
	m = NewMain()
	m.Stderr = &out
	if err := m.ParseFlags([]string{"-m", "a"}); err == nil || !strings.Contains(err.Error(), "$RMB_MAX_SESSIONS_PER_TWIN") {
		t.Errorf("bad variable: %v", err)
	}
}
