// Package pgtest starts a private PostgreSQL server for tests:
//
//	srv := pgtest.Start(t)           // stopped when the test ends
//	url := srv.NewDatabase(t)        // postgres://rmb@127.0.0.1:PORT/test_1?sslmode=disable
//	srv.Restart()                    // fast shutdown, then start on the same port
//
// or, for a package whose tests share one server, pgtest.Shared() and
// pgtest.StopShared() in TestMain.
//
// The server runs from Debian's postgresql binaries (initdb and postgres,
// found in PATH or under /usr/lib/postgresql/*/bin) on a temporary
// directory, listens on a free port of 127.0.0.1 and on a unix socket in
// that directory, trusts local connections and does not fsync. PostgreSQL
// refuses to run as root, so under root the server runs as the `postgres`
// user (or `nobody`), which owns the directory. A test that cannot find
// PostgreSQL fails with a message saying how to install it; it does not
// skip.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is the superuser of the test server; it needs no password.
const User = "rmb"

// libDir is where Debian installs the PostgreSQL versions.
var libDir = "/usr/lib/postgresql"

// ErrNoPostgres says the PostgreSQL server binaries are missing.
var ErrNoPostgres = errors.New("PostgreSQL server binaries (initdb, postgres) not found in PATH or /usr/lib/postgresql/*/bin: run `make test` (scripts/deps.sh installs postgresql with apt-get) or `apt-get install postgresql`")

// Server is a running PostgreSQL server.
type Server struct {
	Host string // 127.0.0.1
	Port int
	Dir  string // holds data/, the socket and postgres.log

	bin     string // directory of initdb and postgres
	cred    *syscall.Credential
	cmd     *exec.Cmd
	exited  chan struct{}
	dbCount atomic.Int64
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// URL is the URL of database db on the server.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", User, s.Addr(), db)
}

// Start starts a server and registers its stop with t.Cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := Run()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(s.Remove)
	return s
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// Shared returns a server started once per process, failing t if it
// cannot start. Stop it with StopShared at the end of TestMain.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = Run() })
	if sharedErr != nil {
		t.Fatalf("pgtest: %v", sharedErr)
	}
	return shared
}

// StopShared stops the server of Shared, if it was started.
func StopShared() {
	if shared != nil {
		shared.Remove()
	}
}

// Run initializes a cluster in a new temporary directory and starts it.
// The caller stops it with Remove.
func Run() (*Server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", bin: bin}
	if s.cred, err = credential(); err != nil {
		return nil, err
	}
	if s.Dir, err = os.MkdirTemp("", "pgtest-"); err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := os.Chown(s.Dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			os.RemoveAll(s.Dir)
			return nil, err
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(s.Dir, "data"),
		"-U", User, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	initdb.Dir = s.Dir
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(s.Dir)
		hint := ""
		if s.cred != nil {
			hint = fmt.Sprintf(" (it runs as uid %d: %s and its parents must be searchable by that user; set TMPDIR elsewhere if not)", s.cred.Uid, s.Dir)
		}
		return nil, fmt.Errorf("initdb%s: %v\n%s", hint, err, out)
	}
	if s.Port, err = freePort(); err != nil {
		os.RemoveAll(s.Dir)
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Remove()
		return nil, err
	}
	return s, nil
}

// findBin finds the directory of initdb and postgres: the one of initdb in
// PATH, else the newest /usr/lib/postgresql/*/bin.
func findBin() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(r))
		}
	}
	found, _ := filepath.Glob(filepath.Join(libDir, "*", "bin"))
	sort.Slice(found, func(i, j int) bool { return version(found[i]) > version(found[j]) })
	dirs = append(dirs, found...)
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

// version is the major version in /usr/lib/postgresql/NN/bin.
func version(bin string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bin)))
	return n
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// credential is whom the server runs as: nil (this process's user) unless
// this process is root, which PostgreSQL refuses.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as (it refuses root): create one with useradd")
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// start runs postgres and waits until it accepts connections.
func (s *Server) start() error {
	logFile, err := os.OpenFile(filepath.Join(s.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	s.cmd = exec.Command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.Dir, "data"),
		"-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses="+s.Host,
		"-c", "unix_socket_directories="+s.Dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "shared_buffers=16MB", "-c", "max_connections=200")
	s.cmd.Dir = s.Dir
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	s.exited = exited
	go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(s.cmd)

	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("postgres exited at start; log:\n%s", s.Log())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("postgres on %s did not accept connections within 60s; log:\n%s", s.Addr(), s.Log())
}

// Log returns what the server logged so far.
func (s *Server) Log() []byte {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "postgres.log"))
	return bytes.TrimSpace(b)
}

// NewDatabase creates an empty database and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d", s.dbCount.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", s.Addr(), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	return s.URL(name)
}

// Stop shuts the server down (fast shutdown: open connections are
// closed) and waits for it to exit. Calling it twice is harmless.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port and data.
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

// Remove stops the server and deletes its directory.
func (s *Server) Remove() {
	s.Stop()
	os.RemoveAll(s.Dir)
}
