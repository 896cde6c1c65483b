package pgtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestServer starts a server, writes to a database, restarts the server
// and reads the row back.
func TestServer(t *testing.T) {
	s := Start(t)
	db := s.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exec := func(sql string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`CREATE TABLE t (n int); INSERT INTO t VALUES (7)`)
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	exec(`DO $$ BEGIN IF (SELECT n FROM t) <> 7 THEN RAISE 'lost the row'; END IF; END $$`)
	s.Stop()
	if conn, err := pgx.Connect(ctx, db); err == nil {
		conn.Close(ctx)
		t.Error("server still answers after Stop")
	}
}

// TestNoPostgres checks the error when the binaries are missing: it says
// how to install them.
func TestNoPostgres(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	old := libDir
	libDir = t.TempDir()
	defer func() { libDir = old }()
	if _, err := Run(); !errors.Is(err, ErrNoPostgres) {
		t.Errorf("Run without PostgreSQL: %v, want ErrNoPostgres", err)
	}
}
