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

// Settings come from flags, then $RMB_*, then --config; --print-config
// shows them with secrets masked and stops.
func TestConfigSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "peer.yaml")
	os.WriteFile(file, []byte("redis: redis://:hunter2@127.0.0.1:6390/2\nrelay: [ws://r1.example, ws://r2.example]\nregistrar: http://file.example\n"), 0o600)
	m := NewMain()
	var out, errs bytes.Buffer
	m.Stdout, m.Stderr = &out, &errs
	vars := map[string]string{"RMB_REGISTRAR": "http://env.example", "RMB_MNEMONIC": "secret words"}
	m.Getenv = func(k string) string { return vars[k] }
	err := m.ParseFlags([]string{"--config", file, "--print-config"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("ParseFlags: %v\n%s", err, errs.String())
	}
	if m.Registrar != "http://env.example" || strings.Join(m.Relays, " ") != "ws://r1.example ws://r2.example" || m.Redis != "redis://:hunter2@127.0.0.1:6390/2" {
		t.Errorf("settings: registrar %q relays %q redis %q", m.Registrar, m.Relays, m.Redis)
	}
	for _, want := range []string{`registrar: "http://env.example"  # $RMB_REGISTRAR`, `redis: "redis://:xxxxx@127.0.0.1:6390/2"  # ` + file} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "hunter2") || strings.Contains(out.String(), "secret words") || m.Mnemonic != "" {
		t.Errorf("a secret was printed or the mnemonic taken from the flag layer:\n%s", out.String())
	}

	m = NewMain()
	m.Stderr = &errs
	m.Getenv = func(k string) string { return map[string]string{"RMB_COMMAND_QUEUES": "many"}[k] }
	if err := m.ParseFlags([]string{"--relay", "ws://r", "--registrar", "http://r"}); err == nil || !strings.Contains(errs.String(), "$RMB_COMMAND_QUEUES") {
		t.Errorf("a bad variable: %v\n%s", err, errs.String())
	}
}
