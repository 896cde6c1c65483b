package main

import (
	"errors"
	"flag"
	"io"
	"testing"

	"github.com/rmb-go/rmb/internal/flagdoc"
)

// TestFlagDocs: the flag table of rmb-relay in docs/operations.md is the one
// of its flags (RMB_UPDATE_DOCS=1 rewrites it).
func TestFlagDocs(t *testing.T) {
	m := NewMain()
	m.Stdout, m.Stderr = io.Discard, io.Discard
	if err := m.ParseFlags([]string{"--version"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--version: %v", err)
	}
	flagdoc.Check(t, "../../docs/operations.md", "rmb-relay", m.flagSet, "RMB")
}
