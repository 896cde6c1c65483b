package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/pgtest"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// TestRunPostgres runs two registrars on one PostgreSQL database: each
// sees what the other registered, the password never reaches the log, and
// the accounts survive a restart of both.
func TestRunPostgres(t *testing.T) {
	ctx := context.Background()
	// Local connections are trusted; the password only has to stay out
	// of the log.
	db := strings.Replace(pgtest.Shared(t).NewDatabase(t), "rmb@", "rmb:pw-not-logged@", 1)
	m1, logs := runMain(t, "--listen", "127.0.0.1:0", "--db", db)
	m2, _ := runMain(t, "--listen", "127.0.0.1:0", "--db", db)
	if strings.Contains(logs.String(), "pw-not-logged") || !strings.Contains(logs.String(), "applied database migration") {
		t.Errorf("log shows the password or lacks the migration:\n%s", logs)
	}
	ed, _ := identity.FromSecret(testMnemonic, identity.Ed25519)
	sr, _ := identity.FromSecret(testMnemonic, identity.Sr25519)
	c1 := registrar.NewClient("http://"+m1.Addr(), nil)
	c2 := registrar.NewClient("http://"+m2.Addr(), nil)
	if twin, err := c1.Register(ctx, ed, []string{"r1.example"}); err != nil || twin.ID != 1 {
		t.Fatalf("register via 1: %+v, %v", twin, err)
	}
	if _, err := c2.Register(ctx, ed, nil); !errors.Is(err, registrar.ErrExists) {
		t.Errorf("same key via 2: %v, want ErrExists", err)
	}
	if twin, err := c2.Register(ctx, sr, nil); err != nil || twin.ID != 2 {
		t.Errorf("register via 2: %+v, %v; want twin 2", twin, err)
	}
	m1.Close()
	m2.Close()

	m3, _ := runMain(t, "--listen", "127.0.0.1:0", "--db", db)
	if got, err := registrar.NewClient("http://"+m3.Addr(), nil).Twin(ctx, 2); err != nil || got.PublicKey[0] != sr.PublicKey()[0] {
		t.Errorf("twin 2 after restart: %+v, %v", got, err)
	}
}

// TestRunPostgresUnreachable checks the start-up error of a database
// nobody answers for: it names the address, not the password.
func TestRunPostgresUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := NewMain()
	m.Stderr = io.Discard
	m.Listen, m.DBPath = "127.0.0.1:0", "postgres://rmb:pw-secret@"+addr+"/rmb?connect_timeout=5"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = m.Run(ctx)
	if err == nil {
		m.Close()
		t.Fatal("Run on an unreachable database succeeded")
	}
	if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "pw-secret") {
		t.Errorf("error %q: want the address %s and not the password", err, addr)
	}
}
