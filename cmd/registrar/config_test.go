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

func TestConfigSources(t *testing.T) {
	file := filepath.Join(t.TempDir(), "registrar.yaml")
	os.WriteFile(file, []byte("listen: 127.0.0.1:9999\ndb: postgres://rmb:hunter2@127.0.0.1/rmb\n"), 0o600)
	t.Setenv("RMB_LISTEN", "127.0.0.1:8888")
	m := NewMain()
	var out bytes.Buffer
	m.Stdout, m.Stderr = &out, &out
	if err := m.ParseFlags([]string{"--config", file, "--print-config"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("ParseFlags: %v\n%s", err, out.String())
	}
	if m.Listen != "127.0.0.1:8888" || m.DBPath != "postgres://rmb:hunter2@127.0.0.1/rmb" {
		t.Errorf("listen %q db %q", m.Listen, m.DBPath)
	}
	if !strings.Contains(out.String(), `db: "postgres://rmb:xxxxx@127.0.0.1/rmb"`) || strings.Contains(out.String(), "hunter2") {
		t.Errorf("--print-config:\n%s", out.String())
	}
	os.WriteFile(file, []byte("dbpath: x\n"), 0o600)
	m = NewMain()
	m.Stderr = &out
	if err := m.ParseFlags([]string{"--config", file}); err == nil || !strings.Contains(err.Error(), `unknown setting "dbpath"`) {
		t.Errorf("unknown setting: %v", err)
	}
}
