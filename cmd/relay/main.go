// Command rmb-relay runs an RMB relay: it accepts twins over WebSocket,
// routes their envelopes, keeps envelopes for offline twins (in memory, or
// in Redis with --redis) and federates with other relays.
//
//	rmb-relay --registrar https://registrar.example -m relay.example --redis redis://localhost:6379
//
// SIGHUP reloads the --allow and --rules files; SIGINT and SIGTERM shut
// down gracefully.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/buildinfo"
	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/internal/pprofserver"
	"github.com/rmb-go/rmb/internal/procs"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
	"github.com/rmb-go/rmb/pkg/relay"
)

func main() {
	procs.QuietSysmon() // first: it may start the program again
	m := NewMain()
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "rmb-relay:", err)
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	if err := m.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "rmb-relay:", err)
		os.Exit(1)
	}
	m.HandleSignals(sigs)
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "rmb-relay:", err)
		os.Exit(1)
	}
}

// Main is the program: ParseFlags, then Run, then Close. Tests run it on
// 127.0.0.1:0.
type Main struct {
	flagSet *flag.FlagSet // the flags of the latest ParseFlags (TestFlagDocs)
	// Configuration, set by ParseFlags.
	Listen          string
	Domains         []string
	Registrar       string
	Redis           string
	Limit           int
	LimitBytes      int64
	LimitWindow     time.Duration
	RankerPeriod    time.Duration
	TLSCert         string
	TLSKey          string
	AllowFile       string
	RulesFile       string
	AdminToken      string
	AdminTokenFile  string // read by Run; beside AdminToken and $RMB_ADMIN_TOKEN
	MaxEnvelopeSize int
	MaxTokenLife    time.Duration
	FedScheme       string
	Debug           int // -d 1: debug; -dd 2: debug with source lines
	ShutdownTimeout time.Duration
	PprofAddr       string
	// Federation bounds (relay.Options) and the private-address switch.
	FedQueue        int
	FedQueueBytes   int64
	FedMaxJobs      int
	FedMaxBytes     int64
	FedAllowPrivate bool
	// Bounds against hostile twins (issue 13): see docs/operations.md.
	HeaderTimeout      time.Duration
	ReadTimeout        time.Duration
	Store              relay.StoreOptions
	SessionsPerTwin    int
	SessionsPerAddress int
	SendQueue          int
	SendQueueBytes     int64
	TrustedProxies     []netip.Prefix
	// Relay cluster (issue 14): NATS URLs and this instance's name.
	NATS     []string
	Instance string

	// Stderr receives the logs. Default os.Stderr.
	Stderr io.Writer
	// Stdout receives --version. Default os.Stdout.
	Stdout io.Writer

	// Set by Run.
	log         *slog.Logger
	relay       *relay.Relay
	server      *http.Server
	ln          net.Listener
	redis       *redis.Client
	stopWatch   context.CancelFunc
	watchDone   chan struct{}
	serveDone   chan error
	registrar   *registrar.Client
	policyFiles bool
	pprof       *pprofserver.Server
}

// NewMain returns a Main with the defaults.
func NewMain() *Main {
	return &Main{
		Listen:          ":8080",
		LimitWindow:     time.Minute,
		RankerPeriod:    time.Hour,
		MaxEnvelopeSize: 1 << 20,
		FedScheme:       "https",
		ShutdownTimeout: 30 * time.Second,
		FedQueue:        1024,
		FedQueueBytes:   16 << 20,
		FedMaxJobs:      16384,
		FedMaxBytes:     256 << 20,
		Stderr:          os.Stderr,
		Stdout:          os.Stdout,
		HeaderTimeout:   10 * time.Second,
		ReadTimeout:     30 * time.Second,
		Store: relay.StoreOptions{
			MaxMessages: 10000, MaxBytes: 64 << 20,
			MaxTwinMessages: 10000, MaxTwinBytes: 32 << 20, MaxTotalBytes: 512 << 20,
		},
		SessionsPerTwin:    64,
		SessionsPerAddress: 256,
		SendQueue:          256,
		SendQueueBytes:     4 << 20,
	}
}

// prefixList is a repeatable flag of CIDRs (a bare address is a /32 or
// /128).
type prefixList []netip.Prefix

func (l *prefixList) String() string {
	var s []string
	for _, p := range *l {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

func (l *prefixList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return fmt.Errorf("want a CIDR like 10.0.0.0/8 or an address, got %q", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		*l = append(*l, p.Masked())
	}
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	for d := range strings.SplitSeq(s, ",") {
		if d = strings.TrimSpace(d); d != "" {
			*l = append(*l, d)
		}
	}
	return nil
}

// seconds is a duration flag that also takes a plain number of seconds, as
// the reference relay does.
type seconds struct{ d *time.Duration }

func (s seconds) String() string {
	if s.d == nil {
		return ""
	}
	return s.d.String()
}
func (s seconds) Set(v string) error {
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		*s.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("want seconds or a duration like 90s, got %q", v)
	}
	*s.d = d
	return nil
}

// ParseFlags reads the command line. Flags take one or two dashes.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("rmb-relay", flag.ContinueOnError)
	m.flagSet = fs // for TestFlagDocs (docs/operations.md)
	fs.SetOutput(m.Stderr)
	printVersion := buildinfo.Flag(fs, "rmb-relay")
	domains := (*stringList)(&m.Domains)
	fs.StringVar(&m.Listen, "listen", m.Listen, "address to listen on")
	fs.StringVar(&m.Listen, "l", m.Listen, "shorthand for --listen")
	fs.Var(domains, "domain", "a domain of this relay, as twins list it in the registrar (repeatable)")
	fs.Var(domains, "m", "shorthand for --domain")
	fs.Var(cliconf.URL{P: &m.Registrar, Check: registrar.CheckURL}, "registrar", "registrar base URL, http:// or https:// (required)")
	fs.StringVar(&m.Redis, "redis", m.Redis, "redis URL for the offline queues (default: in memory)")
	fs.StringVar(&m.Redis, "r", m.Redis, "shorthand for --redis")
	fs.IntVar(&m.Limit, "limit", m.Limit, "envelopes per twin per --limit-window (0: no limit); the Rust relay's --limit COUNT SIZE sets --limit and --limit-size")
	fs.Int64Var(&m.LimitBytes, "limit-size", m.LimitBytes, "envelope bytes per twin per --limit-window (0: no limit)")
	fs.Var(seconds{&m.LimitWindow}, "limit-window", "rate limit window, seconds or a duration")
	fs.Var(seconds{&m.RankerPeriod}, "ranker-period", "window over which federation failures rank relays, seconds or a duration")
	fs.Var(seconds{&m.RankerPeriod}, "p", "shorthand for --ranker-period")
	fs.StringVar(&m.TLSCert, "tls-cert", m.TLSCert, "TLS certificate file (serve HTTPS/WSS)")
	fs.StringVar(&m.TLSKey, "tls-key", m.TLSKey, "TLS key file")
	fs.StringVar(&m.AllowFile, "allow", m.AllowFile, "YAML allow list of twin ids that may connect (reloaded on SIGHUP)")
	fs.StringVar(&m.RulesFile, "rules", m.RulesFile, "YAML routing rules (reloaded on SIGHUP)")
	fs.StringVar(&m.AdminToken, "admin-token", m.AdminToken, "bearer token of the /api/ admin endpoints (default: disabled; prefer --admin-token-file or $"+AdminTokenEnv+")")
	fs.StringVar(&m.AdminTokenFile, "admin-token-file", m.AdminTokenFile, "file holding the admin token")
	fs.IntVar(&m.MaxEnvelopeSize, "max-envelope-size", m.MaxEnvelopeSize, "largest envelope accepted, bytes")
	fs.DurationVar(&m.MaxTokenLife, "max-token-lifetime", m.MaxTokenLife, "longest token lifetime accepted (default 1h)")
	fs.StringVar(&m.FedScheme, "federation-scheme", m.FedScheme, "scheme of federation POSTs to other relays: https, or http for relays on a private network")
	fs.DurationVar(&m.ShutdownTimeout, "shutdown-timeout", m.ShutdownTimeout, "how long a graceful shutdown may take")
	fs.StringVar(&m.PprofAddr, "pprof", m.PprofAddr, "serve Go's profiler (/debug/pprof/) on this private address, e.g. 127.0.0.1:6060 (default: off)")
	cliconf.DebugFlags(fs, &m.Debug, "debug logging")
	fs.IntVar(&m.FedQueue, "federation-queue", m.FedQueue, "envelopes held for one destination relay (waiting, posting or in retry backoff)")
	fs.Int64Var(&m.FedQueueBytes, "federation-queue-bytes", m.FedQueueBytes, "bytes held for one destination relay")
	fs.IntVar(&m.FedMaxJobs, "federation-max-jobs", m.FedMaxJobs, "envelopes held for all destination relays")
	fs.Int64Var(&m.FedMaxBytes, "federation-max-bytes", m.FedMaxBytes, "bytes held for all destination relays")
	fs.BoolVar(&m.FedAllowPrivate, "federation-allow-private", m.FedAllowPrivate, "federate to loopback, private, link-local and multicast addresses (tests, private networks)")
	fs.DurationVar(&m.HeaderTimeout, "header-timeout", m.HeaderTimeout, "longest time to read a request's headers")
	fs.DurationVar(&m.ReadTimeout, "read-timeout", m.ReadTimeout, "longest time to read a request that is not a WebSocket upgrade, body included (federation POSTs)")
	fs.IntVar(&m.Store.MaxMessages, "queue-max-messages", m.Store.MaxMessages, "envelopes stored per offline session")
	fs.Int64Var(&m.Store.MaxBytes, "queue-max-bytes", m.Store.MaxBytes, "bytes stored per offline session")
	fs.IntVar(&m.Store.MaxTwinMessages, "queue-twin-max-messages", m.Store.MaxTwinMessages, "envelopes stored per twin, all its session ids together")
	fs.Int64Var(&m.Store.MaxTwinBytes, "queue-twin-max-bytes", m.Store.MaxTwinBytes, "bytes stored per twin, all its session ids together")
	fs.Int64Var(&m.Store.MaxTotalBytes, "store-max-bytes", m.Store.MaxTotalBytes, "bytes stored in total (memory: plus 128 per envelope; Redis: all twins)")
	fs.IntVar(&m.SessionsPerTwin, "max-sessions-per-twin", m.SessionsPerTwin, "concurrent sessions of one twin")
	fs.IntVar(&m.SessionsPerAddress, "max-sessions-per-address", m.SessionsPerAddress, "concurrent sessions from one client address")
	fs.IntVar(&m.SendQueue, "send-queue", m.SendQueue, "envelopes waiting in memory for one live session's connection (more go to the store)")
	fs.Int64Var(&m.SendQueueBytes, "send-queue-bytes", m.SendQueueBytes, "bytes waiting in memory for one live session's connection (more go to the store)")
	fs.Var((*stringList)(&m.NATS), "nats", "NATS URLs (comma-separated or repeated): join the relay cluster of the instances with the same domains on this NATS; needs --redis (default: single process)")
	fs.StringVar(&m.Instance, "instance", m.Instance, "name of this instance in logs, metrics and the status page (default: host name and --listen port)")
	fs.Var((*prefixList)(&m.TrustedProxies), "trusted-proxy", "CIDR of a reverse proxy whose X-Forwarded-For names the client (repeatable; default: none)")
	// The Rust relay's flags without a counterpart here.
	cliconf.Refuse(fs, "this relay looks twins up at a registrar, not on a chain: give --registrar URL", "substrate", "s")
	cliconf.Refuse(fs, "this relay has no worker pool to size: drop it (sessions are bounded by --max-sessions-per-twin and --max-sessions-per-address)", "workers", "w", "user-per-worker", "u")
	cliconf.Refuse(fs, "this relay follows twin changes on the registrar's change feed, not chain events: drop it", "catchup-threshold")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rmb-relay [flags]\n\nRuns an RMB relay.\n\n")
		cliconf.PrintDefaults(fs)
	}
	conf := cliconf.New(fs, "RMB")
	conf.SkipEnv("admin-token") // $RMB_ADMIN_TOKEN comes after --admin-token-file: see adminToken
	// The Rust relay's spellings: -m a b, --limit COUNT SIZE.
	args = cliconf.Spread(args, []string{"m", "domain", "nats"}, map[string]string{"limit": "limit-size"})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if printVersion(m.Stdout) {
		return flag.ErrHelp
	}
	if err := conf.Apply(os.Getenv); err != nil {
		return err
	}
	if conf.PrintRequested() {
		conf.Print(m.Stdout)
		return flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case m.Registrar == "":
		return errors.New("--registrar is required")
	case len(m.Domains) == 0:
		return errors.New("at least one -m/--domain is required")
	case (m.TLSCert == "") != (m.TLSKey == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case m.FedScheme != "https" && m.FedScheme != "http":
		return fmt.Errorf("--federation-scheme must be https or http, got %q", m.FedScheme)
	case m.Limit < 0 || m.LimitBytes < 0:
		return errors.New("--limit and --limit-size must not be negative")
	case m.FedQueue <= 0 || m.FedQueueBytes <= 0 || m.FedMaxJobs <= 0 || m.FedMaxBytes <= 0:
		return errors.New("--federation-queue, --federation-queue-bytes, --federation-max-jobs and --federation-max-bytes must be positive")
	case m.HeaderTimeout <= 0 || m.ReadTimeout <= 0:
		return errors.New("--header-timeout and --read-timeout must be positive")
	case m.Store.MaxMessages <= 0 || m.Store.MaxBytes <= 0 || m.Store.MaxTwinMessages <= 0 ||
		m.Store.MaxTwinBytes <= 0 || m.Store.MaxTotalBytes <= 0:
		return errors.New("--queue-*, --queue-twin-* and --store-max-bytes must be positive")
	case m.SessionsPerTwin <= 0 || m.SessionsPerAddress <= 0:
		return errors.New("--max-sessions-per-twin and --max-sessions-per-address must be positive")
	case m.SendQueue <= 0 || m.SendQueueBytes <= 0:
		return errors.New("--send-queue and --send-queue-bytes must be positive")
	case m.AdminToken != "" && m.AdminTokenFile != "":
		return errors.New("give --admin-token or --admin-token-file, not both")
	case len(m.NATS) > 0 && m.Redis == "":
		return errors.New("--nats needs --redis: the instances of a cluster share one Redis store")
	case m.Instance != "" && len(m.NATS) == 0:
		return errors.New("--instance needs --nats")
	}
	return nil
}

// AdminTokenEnv is the environment variable read for the admin token when
// neither --admin-token nor --admin-token-file is given.
const AdminTokenEnv = "RMB_ADMIN_TOKEN"

// adminToken finds the admin token: flag, file, then environment. The
// error never holds the token.
func (m *Main) adminToken() (string, error) {
	switch {
	case m.AdminToken != "":
		return m.AdminToken, nil
	case m.AdminTokenFile != "":
		b, err := os.ReadFile(m.AdminTokenFile)
		if err != nil {
			return "", fmt.Errorf("--admin-token-file: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("--admin-token-file: %s is empty", m.AdminTokenFile)
		}
		return t, nil
	}
	return strings.TrimSpace(os.Getenv(AdminTokenEnv)), nil
}

// Run starts the relay and returns once it listens; it logs
// "listening addr=<actual address>".
func (m *Main) Run(ctx context.Context) error {
	m.log = slog.New(slog.NewTextHandler(m.Stderr, cliconf.LogOptions(m.Debug)))

	policy, err := relay.LoadPolicy(m.AllowFile, m.RulesFile)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	m.policyFiles = m.AllowFile != "" || m.RulesFile != ""
	// Load the TLS key pair now, so a bad file fails Run instead of the
	// server dying in the background after "listening".
	var tlsConfig *tls.Config
	if m.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(m.TLSCert, m.TLSKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	adminToken, err := m.adminToken()
	if err != nil {
		return err
	}
	m.registrar = registrar.NewClient(m.Registrar, &registrar.ClientOptions{Logger: m.log.With("component", "registrar")})
	opts := &relay.Options{
		Domains:          m.Domains,
		Directory:        m.registrar,
		Logger:           m.log,
		MaxEnvelopeSize:  m.MaxEnvelopeSize,
		TokenPolicy:      identity.TokenPolicy{MaxLifetime: m.MaxTokenLife},
		RankerPeriod:     m.RankerPeriod,
		Policy:           policy,
		AdminToken:       adminToken,
		FederationScheme: m.FedScheme,
		Version:          buildinfo.Get().String(),

		FederationQueueSize:    m.FedQueue,
		FederationQueueBytes:   m.FedQueueBytes,
		FederationMaxJobs:      m.FedMaxJobs,
		FederationMaxBytes:     m.FedMaxBytes,
		FederationAllowPrivate: m.FedAllowPrivate,

		StoreOptions:          &m.Store,
		ReadTimeout:           m.ReadTimeout,
		MaxSessionsPerTwin:    m.SessionsPerTwin,
		MaxSessionsPerAddress: m.SessionsPerAddress,
		SendQueueSize:         m.SendQueue,
		SendQueueBytes:        m.SendQueueBytes,
		TrustedProxies:        m.TrustedProxies,
		NATS:                  m.NATS,
		Instance:              m.Instance,
	}
	if len(m.NATS) > 0 && opts.Instance == "" {
		_, port, _ := net.SplitHostPort(m.Listen)
		opts.Instance = relay.DefaultInstance() + ":" + port
	}
	if m.Limit > 0 || m.LimitBytes > 0 {
		opts.RateLimit = &relay.RateLimit{Messages: m.Limit, Bytes: m.LimitBytes, Window: m.LimitWindow}
	}
	if m.Redis != "" {
		ro, err := redis.ParseURL(m.Redis)
		if err != nil {
			return fmt.Errorf("--redis: %s", redisapi.RedactPassword(err.Error(), m.Redis))
		}
		m.redis = redis.NewClient(ro)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = m.redis.Ping(pctx).Err()
		cancel()
		if err != nil {
			m.redis.Close()
			return fmt.Errorf("redis %s: %w", redisapi.RedactURL(m.Redis), err)
		}
		opts.Store = relay.NewRedisStore(m.redis, &m.Store)
		opts.FederationRedis = m.redis
	}
	if m.relay, err = relay.New(opts); err != nil {
		return err
	}
	// go_goroutines, go_memstats_* and process_* next to the relay's own
	// metrics: what a leak shows in first.
	m.relay.Registry().MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Get().Collector())
	if m.ln, err = net.Listen("tcp", m.Listen); err != nil {
		m.relay.Shutdown(ctx)
		m.closeBackends()
		return err
	}
	wctx, stop := context.WithCancel(context.Background())
	m.stopWatch, m.watchDone = stop, make(chan struct{})
	go func() {
		defer close(m.watchDone)
		m.registrar.Watch(wctx)
	}()
	m.server = &http.Server{
		Handler:           m.relay.Handler(),
		ReadHeaderTimeout: m.HeaderTimeout,
		// Keep-alive connections (federation) idle this long are closed;
		// WebSocket sessions are hijacked and not affected.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		TLSConfig:   tlsConfig,
	}
	m.serveDone = make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			m.serveDone <- m.server.ServeTLS(m.ln, "", "")
		} else {
			m.serveDone <- m.server.Serve(m.ln)
		}
	}()
	m.log.Info("listening", "addr", m.ln.Addr().String(), "domains", m.Domains, "tls", m.TLSCert != "", "redis", m.Redis != "")
	if m.PprofAddr != "" {
		if m.pprof, err = pprofserver.Listen(ctx, m.PprofAddr); err != nil {
			m.Close()
			return err
		}
		m.log.Info("profiler listening", "addr", m.pprof.Addr())
	}
	return nil
}

// PprofListenAddr is where the profiler is served (after Run), or "".
func (m *Main) PprofListenAddr() string {
	if m.pprof == nil {
		return ""
	}
	return m.pprof.Addr()
}

// Addr is the address the relay listens on (after Run).
func (m *Main) Addr() string { return m.ln.Addr().String() }

// Relay is the running relay (after Run).
func (m *Main) Relay() *relay.Relay { return m.relay }

// Reload reads the allow and rules files again and applies them without
// dropping sessions. On error the old policy stays.
func (m *Main) Reload() error {
	if !m.policyFiles {
		return nil
	}
	p, err := relay.LoadPolicy(m.AllowFile, m.RulesFile)
	if err != nil {
		m.log.Error("policy reload failed, keeping the old one", "err", err)
		return err
	}
	m.relay.SetPolicy(p)
	m.log.Info("policy reloaded", "allow", m.AllowFile, "rules", m.RulesFile)
	return nil
}

// HandleSignals reloads on SIGHUP and returns on SIGINT or SIGTERM (or when
// sigs is closed), or when the server fails.
func (m *Main) HandleSignals(sigs <-chan os.Signal) {
	for {
		select {
		case sig, ok := <-sigs:
			if !ok {
				return
			}
			if sig == syscall.SIGHUP {
				m.Reload()
				continue
			}
			m.log.Info("shutting down", "signal", sig.String())
			return
		case err := <-m.serveDone:
			m.log.Error("server failed", "err", err)
			m.serveDone <- err
			return
		}
	}
}

// Close shuts down gracefully: no new connections, sessions closed (their
// unsent envelopes go back to the store), then the store and registrar
// connections. Calling it again does nothing.
func (m *Main) Close() error {
	if m.server == nil {
		return nil
	}
	defer func() { m.server = nil }()
	if m.pprof != nil {
		m.pprof.Close()
		m.pprof = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.ShutdownTimeout)
	defer cancel()
	errs := []error{m.server.Shutdown(ctx), m.relay.Shutdown(ctx)}
	if err := <-m.serveDone; !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	m.stopWatch()
	<-m.watchDone
	errs = append(errs, m.closeBackends())
	m.log.Info("stopped")
	return errors.Join(errs...)
}

func (m *Main) closeBackends() error {
	if m.redis != nil {
		return m.redis.Close()
	}
	return nil
}
