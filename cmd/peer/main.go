// Command rmb-peer connects a twin to the Reliable Message Bus and serves
// the local JSON API over Redis (docs/protocol.md §9), with the flags of the
// reference Rust peer:
//
//	RMB_MNEMONIC="..." rmb-peer --relay wss://relay.example --registrar https://registrar.example \
//	    -r redis://localhost:6379
//
// The secret comes from -m/--mnemonic, --mnemonic-file or the RMB_MNEMONIC
// environment variable (the latter two keep it out of ps). SIGINT or
// SIGTERM stop the peer gracefully; SIGHUP reloads the --policy file.
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
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/rmb-go/rmb/internal/buildinfo"
	"github.com/rmb-go/rmb/internal/cliconf"
	"github.com/rmb-go/rmb/internal/pprofserver"
	"github.com/rmb-go/rmb/internal/procs"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/peer"
	"github.com/rmb-go/rmb/pkg/redisapi"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// MnemonicEnv is the environment variable read when no mnemonic flag is
// given.
const MnemonicEnv = "RMB_MNEMONIC"

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
		fmt.Fprintln(os.Stderr, "rmb-peer:", err)
		os.Exit(1)
	}
	if m.AdaptProcs {
		go procs.Adapt(ctx, procs.Options{})
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	code := 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			if err := m.ReloadPolicy(); err != nil {
				m.log.Error("policy not reloaded", "err", err)
			}
		case <-m.Done():
			code = 1 // the peer stopped on its own; it logged why
			break loop
		}
	}
	stop() // a second signal kills the process
	if err := m.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "rmb-peer:", err)
		code = 1
	}
	os.Exit(code)
}

// Main is the program: flags in, a running peer out. Tests run it against
// in-process servers.
type Main struct {
	flagSet *flag.FlagSet // the flags of the latest ParseFlags (TestFlagDocs)
	// Set by ParseFlags.
	Mnemonic     string
	MnemonicFile string
	KeyType      string
	Relays       []string
	Redis        string
	Registrar    string
	NoUpdate     bool
	AdaptProcs   bool // --adapt-procs: main runs procs.Adapt
	Debug        int  // -d 1: debug; -dd 2: debug with source lines
	PolicyFile   string
	MetricsAddr  string
	PprofAddr    string
	HTTPAddr     string // --http: the local HTTP API (peer.NewHTTPAPI)
	// Bounds on what remote twins leave in Redis (peer.Options).
	Serve             []string
	CommandQueues     int
	CommandQueueBytes int64
	CommandBytes      int64
	AnswerCacheBytes  int64

	// Stderr receives the log and flag errors. Default os.Stderr.
	Stderr io.Writer
	// Stdout receives --version. Default os.Stdout.
	Stdout io.Writer
	// Getenv reads the environment. Default os.Getenv.
	Getenv func(string) string

	// Set by Run.
	log     *slog.Logger
	peer    *peer.Peer
	rdb     *redis.Client
	metrics *http.Server
	pprof   *pprofserver.Server
	http    *http.Server
	httpLn  net.Listener
	mln     net.Listener
	cancel  context.CancelFunc
	done    chan struct{} // closed when the peer stops
	runErr  error         // the peer's Run result, once done is closed
}

// NewMain returns a Main with the flag defaults.
func NewMain() *Main {
	return &Main{KeyType: "sr25519", Redis: "redis://localhost:6379", Stderr: os.Stderr, Stdout: os.Stdout, Getenv: os.Getenv}
}

// relayList is the repeatable --relay flag.
type relayList struct{ m *Main }

func (r relayList) String() string {
	if r.m == nil {
		return ""
	}
	return strings.Join(r.m.Relays, ",")
}

func (r relayList) Set(s string) error {
	if err := cliconf.CheckURL(s, "ws", "wss"); err != nil {
		return err
	}
	if _, err := peer.RelayDomain(s); err != nil {
		return err
	}
	r.m.Relays = append(r.m.Relays, s)
	return nil
}

// ParseFlags reads command-line arguments (without the program name). On
// an error it has already printed the error and the usage to Stderr.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("rmb-peer", flag.ContinueOnError)
	m.flagSet = fs // for TestFlagDocs (docs/operations.md)
	fs.SetOutput(m.Stderr)
	printVersion := buildinfo.Flag(fs, "rmb-peer")
	str := func(p *string, long, short, usage string) {
		fs.StringVar(p, long, *p, usage)
		if short != "" {
			fs.StringVar(p, short, *p, "shorthand for --"+long)
		}
	}
	str(&m.Mnemonic, "mnemonic", "m", "twin secret: BIP-39 mnemonic or 0x-prefixed hex seed (prefer --mnemonic-file or $"+MnemonicEnv+")")
	str(&m.MnemonicFile, "mnemonic-file", "", "file holding the twin secret")
	str(&m.KeyType, "key-type", "k", "signing key type: ed25519 or sr25519")
	str(&m.Redis, "redis", "r", "Redis URL: redis://host:port, tcp://host:port or unix:///path")
	fs.Var(cliconf.URL{P: &m.Registrar, Check: registrar.CheckURL}, "registrar", "registrar base URL, http:// or https://, e.g. https://registrar.example")
	str(&m.PolicyFile, "policy", "", "YAML file of which twins may call which commands (reloaded on SIGHUP)")
	str(&m.MetricsAddr, "metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9100")
	str(&m.HTTPAddr, "http", "", "serve the local JSON API over HTTP on unix:///path or a loopback 127.0.0.1:PORT (no authentication: loopback only)")
	str(&m.PprofAddr, "pprof", "", "serve Go's profiler (/debug/pprof/) on this private address, e.g. 127.0.0.1:6060")
	fs.Var(relayList{m}, "relay", fmt.Sprintf("relay URL, ws:// or wss:// (repeat for up to %d)", peer.MaxRelays))
	fs.Func("serve", "comma-separated globs of the commands services serve through Redis; requests for others are answered 404 at once (default: any)", func(v string) error {
		for _, g := range strings.Split(v, ",") {
			if g = strings.TrimSpace(g); g != "" {
				m.Serve = append(m.Serve, g)
			}
		}
		return nil
	})
	fs.IntVar(&m.CommandQueues, "command-queues", 1000, "most msgbus.<cmd> lists in use at a time")
	fs.Int64Var(&m.CommandQueueBytes, "command-queue-bytes", 16<<20, "most bytes in one msgbus.<cmd> list")
	fs.Int64Var(&m.CommandBytes, "command-bytes", 256<<20, "most bytes in all msgbus.<cmd> lists together")
	fs.Int64Var(&m.AnswerCacheBytes, "answer-cache-bytes", 64<<20, "most bytes of answers kept for re-sent requests")
	fs.BoolVar(&m.NoUpdate, "no-update", m.NoUpdate, "do not update the twin's relays and e2e key at the registrar")
	fs.BoolVar(&m.AdaptProcs, "adapt-procs", true, "run on one P while one core is enough, on all once busy (saves thread wake-ups at low load; off when GOMAXPROCS is set)")
	cliconf.DebugFlags(fs, &m.Debug, "log at debug level")
	// The Rust peer's spellings: --mnemonics and --seed (both deprecated
	// there) are --mnemonic, which takes a 0x hex seed too; and the flags
	// without a counterpart here.
	fs.StringVar(&m.Mnemonic, "mnemonics", "", "shorthand for --mnemonic (the Rust peer's spelling)")
	fs.StringVar(&m.Mnemonic, "seed", "", "shorthand for --mnemonic (the Rust peer's spelling; --mnemonic takes a 0x hex seed)")
	cliconf.Refuse(fs, "this peer finds twins at a registrar, not on a chain: give --registrar URL", "substrate", "s")
	cliconf.Refuse(fs, "this peer does not accept uploads: drop it", "uploads", "u")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: rmb-peer [flags]\n\nConnects a twin to RMB and serves the local Redis API.\n\n")
		cliconf.PrintDefaults(fs)
	}
	conf := cliconf.New(fs, "RMB")
	conf.SkipEnv("mnemonic") // $RMB_MNEMONIC comes after --mnemonic-file: see secret
	// The Rust peer's spelling --relay a b.
	args = cliconf.Spread(args, []string{"relay"}, nil)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if printVersion(m.Stdout) {
		return flag.ErrHelp
	}
	err := conf.Apply(m.Getenv)
	if err == nil && conf.PrintRequested() {
		conf.Print(m.Stdout)
		return flag.ErrHelp
	}
	switch {
	case err != nil:
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments: %q", fs.Args())
	case len(m.Relays) == 0:
		err = errors.New("at least one --relay is required")
	case len(m.Relays) > peer.MaxRelays:
		err = fmt.Errorf("at most %d --relay flags", peer.MaxRelays)
	case m.Registrar == "":
		err = errors.New("--registrar is required")
	case m.Mnemonic != "" && m.MnemonicFile != "":
		err = errors.New("give --mnemonic or --mnemonic-file, not both")
	case m.CommandQueues <= 0 || m.CommandQueueBytes <= 0 || m.CommandBytes <= 0 || m.AnswerCacheBytes <= 0:
		err = errors.New("--command-queues, --command-queue-bytes, --command-bytes and --answer-cache-bytes must be positive")
	}
	if err == nil {
		_, err = identity.ParseKeyType(m.KeyType)
	}
	if err == nil && m.HTTPAddr != "" {
		err = peer.CheckHTTPAddress(m.HTTPAddr)
	}
	for _, g := range m.Serve {
		if err == nil {
			if err = peer.CheckGlob(g); err != nil {
				err = fmt.Errorf("--serve: %w", err)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(fs.Output(), err)
		fs.Usage()
	}
	return err
}

// secret finds the mnemonic: flag, file, then environment.
func (m *Main) secret() (string, error) {
	switch {
	case m.Mnemonic != "":
		return m.Mnemonic, nil
	case m.MnemonicFile != "":
		b, err := os.ReadFile(m.MnemonicFile)
		if err != nil {
			return "", fmt.Errorf("read mnemonic file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if s := strings.TrimSpace(m.Getenv(MnemonicEnv)); s != "" {
		return s, nil
	}
	return "", fmt.Errorf("no secret: give --mnemonic, --mnemonic-file or $%s", MnemonicEnv)
}

// RedisOptions parses the --redis URL: redis://, rediss://, tcp://host:port
// or unix:///path.
//
// The peer speaks RESP2 unless the URL asks for another protocol
// (?protocol=3): it uses nothing of RESP3, and on RESP3 connections
// go-redis peeks at the socket for push notifications before most round
// trips, a syscall each time on the connections the peer keeps for its
// loops.
func RedisOptions(raw string) (*redis.Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the URL, password and all.
		return nil, errors.New("bad --redis URL: cannot parse it")
	}
	shown := u.Redacted()
	switch u.Scheme {
	case "tcp":
		if u.Host == "" {
			return nil, fmt.Errorf("bad --redis URL %q: want tcp://host:port", shown)
		}
		return &redis.Options{Addr: u.Host, Protocol: 2}, nil
	case "redis", "rediss", "unix":
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("bad --redis URL %q: %s", shown, redisapi.RedactPassword(err.Error(), raw))
		}
		switch o.Protocol {
		case 0:
			o.Protocol = 2
		case 2, 3:
		default:
			return nil, fmt.Errorf("bad --redis URL %q: protocol must be 2 or 3", shown)
		}
		return o, nil
	}
	return nil, fmt.Errorf("bad --redis URL %q: want redis://, tcp:// or unix://", shown)
}

// RedactURL returns raw with its password replaced, for logs and error
// texts (redisapi.RedactURL).
func RedactURL(raw string) string { return redisapi.RedactURL(raw) }

// Run starts the peer: it registers the twin (logging twin=N), connects to
// the relays and Redis in the background, and returns once the twin is
// known. ctx bounds only the start-up: stop the peer with Close.
func (m *Main) Run(ctx context.Context) error {
	m.log = slog.New(slog.NewTextHandler(m.Stderr, cliconf.LogOptions(m.Debug)))
	redis.SetLogger(redisLogger{m.log})

	secret, err := m.secret()
	if err != nil {
		return err
	}
	kt, err := identity.ParseKeyType(m.KeyType)
	if err != nil {
		return err
	}
	id, err := identity.FromSecret(secret, kt)
	if err != nil {
		return fmt.Errorf("bad secret: %w", err)
	}
	ropts, err := RedisOptions(m.Redis)
	if err != nil {
		return err
	}
	var pol *peer.Policy
	if m.PolicyFile != "" {
		if pol, err = peer.LoadPolicy(m.PolicyFile); err != nil {
			return err
		}
	}
	m.rdb = redis.NewClient(ropts)
	if err := m.rdb.Ping(ctx).Err(); err != nil {
		m.log.Warn("redis not reachable yet; will retry", "redis", RedactURL(m.Redis), "err", err)
	}
	reg := registrar.NewClient(m.Registrar, &registrar.ClientOptions{Logger: m.log})
	p, err := peer.New(&peer.Options{
		Identity:  id,
		Relays:    m.Relays,
		Registrar: reg,
		Redis:     m.rdb,
		Logger:    m.log,
		NoUpdate:  m.NoUpdate,
		Policy:    pol,
		Version:   buildinfo.Get().Line("rmb-go-peer"),

		Serve:               m.Serve,
		MaxCommandQueues:    m.CommandQueues,
		MaxQueueBytes:       m.CommandQueueBytes,
		MaxCommandBytes:     m.CommandBytes,
		MaxAnswerCacheBytes: m.AnswerCacheBytes,
	})
	if err != nil {
		m.rdb.Close()
		return err
	}
	m.peer = p
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.done = make(chan struct{})
	go func() {
		defer close(m.done)
		m.runErr = p.Run(runCtx)
		if m.runErr != nil {
			m.log.Error("peer stopped", "err", m.runErr)
		}
	}()
	select {
	case <-p.Ready():
	case <-m.done:
		m.closeRedis()
		return m.runErr
	case <-ctx.Done():
		m.Close()
		return ctx.Err()
	}
	if m.MetricsAddr != "" {
		if err := m.serveMetrics(ctx); err != nil {
			m.Close()
			return err
		}
	}
	if m.HTTPAddr != "" {
		if m.httpLn, err = peer.ListenHTTP(m.HTTPAddr); err != nil {
			m.Close()
			return err
		}
		m.http = peer.NewHTTPAPI(p, nil).HTTPServer()
		go m.http.Serve(m.httpLn)
		m.log.Info("HTTP API listening", "addr", m.HTTPAddr)
	}
	if m.PprofAddr != "" {
		if m.pprof, err = pprofserver.Listen(ctx, m.PprofAddr); err != nil {
			m.Close()
			return err
		}
		m.log.Info("profiler listening", "addr", m.pprof.Addr())
	}
	return nil
}

// HTTPListenAddr is where the HTTP API is served (a path for a unix
// socket), once Run has returned.
func (m *Main) HTTPListenAddr() string {
	if m.httpLn == nil {
		return ""
	}
	return m.httpLn.Addr().String()
}

// PprofListenAddr is where the profiler is served, once Run has returned.
func (m *Main) PprofListenAddr() string {
	if m.pprof == nil {
		return ""
	}
	return m.pprof.Addr()
}

func (m *Main) serveMetrics(ctx context.Context) error {
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", m.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listen: %w", err)
	}
	m.mln = ln
	mux := http.NewServeMux()
	// The peer's metrics plus go_goroutines, go_memstats_* and process_*.
	rt := prometheus.NewRegistry()
	rt.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildinfo.Get().Collector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "rmb_peer_gomaxprocs", Help: "GOMAXPROCS now (--adapt-procs changes it)"},
			func() float64 { return float64(runtime.GOMAXPROCS(0)) }))
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{m.peer.Registry(), rt}, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", m.readyz)
	m.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	go m.metrics.Serve(ln)
	m.log.Info("metrics listening", "addr", ln.Addr().String())
	return nil
}

// MetricsListenAddr is where metrics are served, once Run has returned.
func (m *Main) MetricsListenAddr() string {
	if m.mln == nil {
		return ""
	}
	return m.mln.Addr().String()
}

// Peer is the running peer, once Run has returned.
func (m *Main) Peer() *peer.Peer { return m.peer }

// Done is closed when the peer has stopped, after Close or on a failure.
func (m *Main) Done() <-chan struct{} { return m.done }

// ReloadPolicy reads the --policy file again and applies it. Without
// --policy it does nothing.
func (m *Main) ReloadPolicy() error {
	if m.PolicyFile == "" || m.peer == nil {
		return nil
	}
	pol, err := peer.LoadPolicy(m.PolicyFile)
	if err != nil {
		return err
	}
	m.peer.ReloadPolicy(pol)
	m.log.Info("policy reloaded", "file", m.PolicyFile)
	return nil
}

// Close stops the peer and the metrics and profiler servers. Requests not
// yet handed to a relay stay in Redis for the next start. Calling it again
// does nothing.
func (m *Main) Close() error {
	if m.pprof != nil {
		m.pprof.Close()
		m.pprof = nil
	}
	if m.http != nil {
		// Long polls and calls wait for minutes: give them a moment, then
		// cut them.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if m.http.Shutdown(ctx) != nil {
			m.http.Close()
		}
		cancel()
		m.http = nil
	}
	if m.metrics != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m.metrics.Shutdown(ctx)
		cancel()
		m.metrics = nil
	}
	if m.cancel != nil {
		m.log.Info("shutting down")
		m.cancel()
		<-m.done
		m.cancel = nil
	}
	m.closeRedis()
	return nil
}

func (m *Main) closeRedis() {
	if m.rdb != nil {
		m.rdb.Close()
		m.rdb = nil
	}
}

// readyz answers 200 when the peer can do its work: started, Redis
// answering, at least one relay connected; 503 with the reason otherwise.
func (m *Main) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var why string
	select {
	case <-m.peer.Ready():
		if err := m.rdb.Ping(ctx).Err(); err != nil {
			why = "redis is not answering"
		} else if m.peer.Connected() == 0 {
			why = "no relay connected"
		}
	default:
		why = "starting"
	}
	if why != "" {
		http.Error(w, why, http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ready\n")
}

// redisLogger sends go-redis's own messages (connection pool trouble)
// through the peer's log instead of the standard logger.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Warn("redis client: " + fmt.Sprintf(format, v...))
}
