// Command rmb-registrar serves the RMB twin registrar account API
// (PROTOCOL.md §8) over HTTP, keeping accounts in a bbolt file or in a
// PostgreSQL database that several registrars may share.
//
//	rmb-registrar --listen :8090 --db rmb-registrar.db
//	rmb-registrar --listen :8090 --db 'postgres://rmb:PASSWORD@db.example:5432/rmb?sslmode=require'
//
// SIGINT or SIGTERM shuts it down gracefully: waiting change-feed polls are
// answered, in-flight requests finish, and the database is closed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rmb-go/rmb/internal/buildinfo"
	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/internal/procs"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// MemoryDB is the --db value that keeps accounts in memory only.
const MemoryDB = ":memory:"

// shutdownTimeout bounds the graceful part of Close.
const shutdownTimeout = 10 * time.Second

func main() {
	procs.QuietSysmon() // first: it may start the program again
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m := NewMain()
	if err := m.ParseFlags(os.Args[1:]); errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		os.Exit(2) // ParseFlags printed why
	}
	if err := m.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "rmb-registrar:", err)
		os.Exit(1)
	}

	code := 0
	select {
	case <-ctx.Done():
	case <-m.Done():
		code = 1 // the server stopped on its own; Run logged why
	}
	stop() // a second signal kills the process
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "rmb-registrar:", err)
		code = 1
	}
	os.Exit(code)
}

// Main is the program: flags in, a running server out. Tests run it on
// 127.0.0.1:0.
type Main struct {
	flagSet *flag.FlagSet // the flags of the latest ParseFlags (TestFlagDocs)
	// Set by ParseFlags.
	Listen string
	DBPath string
	Debug  bool

	// Stderr receives the log and flag errors. Default os.Stderr.
	Stderr io.Writer
	// Stdout receives --version. Default os.Stdout.
	Stdout io.Writer

	// Set by Run.
	log      *slog.Logger
	store    registrar.Store
	server   *registrar.Server
	http     *http.Server
	listener net.Listener
	done     chan struct{} // closed when Serve returns
}

// NewMain returns a Main with the flag defaults.
func NewMain() *Main {
	return &Main{Listen: ":8090", DBPath: "rmb-registrar.db", Stderr: os.Stderr, Stdout: os.Stdout}
}

// ParseFlags reads command-line arguments (without the program name). On
// an error it has already printed the error and the usage to Stderr.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("rmb-registrar", flag.ContinueOnError)
	m.flagSet = fs // for TestFlagDocs (docs/operations.md)
	fs.SetOutput(m.Stderr)
	printVersion := buildinfo.Flag(fs, "rmb-registrar")
	fs.StringVar(&m.Listen, "listen", m.Listen, "address to serve HTTP on")
	fs.StringVar(&m.DBPath, "db", m.DBPath, `bbolt database file, a postgres:// (or postgresql://) URL of a PostgreSQL database several registrars may share, or "`+MemoryDB+`" to keep accounts in memory`)
	fs.BoolVar(&m.Debug, "debug", m.Debug, "log at debug level")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rmb-registrar [flags]\n\nServes the RMB registrar account API.\n\n")
		fs.PrintDefaults()
	}
	conf := cliconf.New(fs, "RMB")
	if err := fs.Parse(args); err != nil {
		return err // fs has printed it, with the usage
	}
	if printVersion(m.Stdout) {
		return flag.ErrHelp
	}
	err := conf.Apply(os.Getenv)
	if err == nil && conf.PrintRequested() {
		conf.Print(m.Stdout)
		return flag.ErrHelp
	}
	switch {
	case err != nil:
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments: %q", fs.Args())
	case m.DBPath == "":
		err = errors.New("--db must not be empty")
	case strings.Contains(m.DBPath, "://") && !registrar.IsPostgresURL(m.DBPath):
		err = fmt.Errorf("--db %s: want a file path or a postgres:// URL", registrar.RedactURL(m.DBPath))
	}
	if err != nil {
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
	}
	return err
}

// Run opens the store, starts listening and serves in the background. It
// returns once the server accepts connections; Addr then tells where. ctx
// bounds only the start-up: stop the server with Close.
func (m *Main) Run(ctx context.Context) error {
	level := slog.LevelInfo
	if m.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: level}))
	m.log = log

	switch {
	case m.DBPath == MemoryDB:
		m.store = registrar.NewMemStore()
	case registrar.IsPostgresURL(m.DBPath):
		s, err := registrar.OpenPostgres(ctx, m.DBPath, &registrar.PostgresOptions{Logger: log})
		if err != nil {
			return err
		}
		m.store = s
	default:
		s, err := registrar.OpenBolt(m.DBPath)
		if err != nil {
			return err
		}
		m.store = s
	}
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", m.Listen)
	if err != nil {
		m.store.Close()
		m.store = nil
		return fmt.Errorf("listen: %w", err)
	}
	m.listener = ln
	m.server = registrar.NewServer(&registrar.Options{Store: m.store, Logger: log})
	m.http = &http.Server{
		Handler:           m.server.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      registrar.MaxChangesWait + 30*time.Second, // long polls
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	m.done = make(chan struct{})
	go func() {
		defer close(m.done)
		if err := m.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve failed", "err", err)
		}
	}()
	log.Info("listening", "addr", ln.Addr().String(), "db", registrar.RedactURL(m.DBPath))
	return nil
}

// Addr is the address the server listens on, once Run has returned.
func (m *Main) Addr() string {
	if m.listener == nil {
		return ""
	}
	return m.listener.Addr().String()
}

// Done is closed when the server has stopped serving, after Close or on a
// failure.
func (m *Main) Done() <-chan struct{} { return m.done }

// Close shuts the server down gracefully (waiting change-feed polls are
// answered at once), then closes the store. Calling it again does nothing.
func (m *Main) Close() error {
	var errs []error
	if m.http != nil {
		m.log.Info("shutting down")
		m.server.Close()
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := m.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shutdown: %w", err))
		}
		<-m.done
		m.http = nil
	}
	if m.store != nil {
		if err := m.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
		m.store = nil
	}
	return errors.Join(errs...)
}
