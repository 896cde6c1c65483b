package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rmb-go/rmb/internal/redistest"
	"github.com/rmb-go/rmb/internal/wait"
	"github.com/rmb-go/rmb/pkg/identity"
	"github.com/rmb-go/rmb/pkg/registrar"
)

// Bins are the paths of the built binaries.
type Bins struct {
	Registrar, Relay, Peer string
}

// ModuleRoot finds the directory holding go.mod, walking up from the
// working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("harness: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Build compiles cmd/registrar, cmd/relay and cmd/peer into dir with
// `go build`.
func Build(dir string) (*Bins, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, redistest.ErrNoRedis
	}
	b := &Bins{
		Registrar: filepath.Join(dir, "rmb-registrar"),
		Relay:     filepath.Join(dir, "rmb-relay"),
		Peer:      filepath.Join(dir, "rmb-peer"),
	}
	goBin := "go"
	if g := os.Getenv("GO"); g != "" {
		goBin = g
	}
	for out, pkg := range map[string]string{b.Registrar: "./cmd/registrar", b.Relay: "./cmd/relay", b.Peer: "./cmd/peer"} {
		cmd := exec.Command(goBin, "build", "-o", out, pkg)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

// Proc is one process of the cluster. Start it, Kill it (SIGKILL), Stop
// it (SIGTERM), Start it again: the same command line each time.
type Proc struct {
	Name string
	Path string
	Args []string
	Env  []string
	Log  string // combined stdout and stderr, appended across restarts

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs the process; it is an error to start a running one.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running", p.Name)
	}
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), p.Name)
	cmd := exec.Command(p.Path, p.Args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// Running reports whether the process was started and not yet stopped by
// Kill or Stop (it may have exited on its own).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// Exited reports whether a started process has exited on its own.
func (p *Proc) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// PID is the process id, 0 when not running.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Kill sends SIGKILL, as a crash would, and waits for the exit.
func (p *Proc) Kill() { p.signal(syscall.SIGKILL, 0) }

// Stop sends SIGTERM and waits up to 15 seconds, then kills.
func (p *Proc) Stop() { p.signal(syscall.SIGTERM, 15*time.Second) }

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-done:
			return
		case <-time.After(grace):
			cmd.Process.Kill()
		}
	}
	<-done
}

// RSS is the resident set size of the process in bytes (VmRSS).
func (p *Proc) RSS() (int64, error) {
	pid := p.PID()
	if pid == 0 {
		return 0, fmt.Errorf("%s is not running", p.Name)
	}
	return RSS(pid)
}

// RSS reads VmRSS of pid from /proc, in bytes.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// Tail returns the last n lines of the process log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Cluster owns the processes of one scenario.
type Cluster struct {
	Dir  string
	Bins *Bins

	mu    sync.Mutex
	procs []*Proc
	redis []*redistest.Server
}

// NewCluster returns a cluster keeping its files in dir.
func NewCluster(dir string, bins *Bins) *Cluster { return &Cluster{Dir: dir, Bins: bins} }

// Close kills every process and Redis server of the cluster.
func (c *Cluster) Close() {
	c.mu.Lock()
	procs, rs := c.procs, c.redis
	c.procs, c.redis = nil, nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Kill()
	}
	for _, r := range rs {
		r.Kill()
	}
}

// Logs returns the tails of every process log, for a failure message.
func (c *Cluster) Logs(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var sb strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&sb, "--- %s (%s) ---\n%s\n", p.Name, p.Log, p.Tail(n))
	}
	return sb.String()
}

func (c *Cluster) add(p *Proc) (*Proc, error) {
	if p.Log == "" {
		p.Log = filepath.Join(c.Dir, p.Name+".log")
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, p.Start()
}

// Redis starts a redis-server owned by the cluster.
func (c *Cluster) Redis(aof bool) (*redistest.Server, error) {
	dir, err := os.MkdirTemp(c.Dir, "redis-")
	if err != nil {
		return nil, err
	}
	s, err := redistest.Run(dir, &redistest.Options{AOF: aof})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.redis = append(c.redis, s)
	c.mu.Unlock()
	return s, nil
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Registrar is a running rmb-registrar.
type Registrar struct {
	*Proc
	URL    string
	Client *registrar.Client
}

// StartRegistrar starts a registrar with a bbolt database in the cluster
// directory and waits for /healthz.
func (c *Cluster) StartRegistrar(ctx context.Context) (*Registrar, error) {
	return c.StartRegistrarDB(ctx, filepath.Join(c.Dir, "registrar.db"))
}

// StartRegistrarDB starts a registrar on db (a bbolt file or a
// postgres:// URL) and waits for /healthz.
func (c *Cluster) StartRegistrarDB(ctx context.Context, db string) (*Registrar, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	p, err := c.add(&Proc{Name: "registrar", Path: c.Bins.Registrar,
		Args: []string{"--listen", addr, "--db", db}})
	if err != nil {
		return nil, err
	}
	r := &Registrar{Proc: p, URL: "http://" + addr, Client: registrar.NewClient("http://"+addr, nil)}
	return r, WaitHTTP(ctx, r.URL+"/healthz", 15*time.Second)
}

// Relay is a running rmb-relay; its domain is its address.
type Relay struct {
	*Proc
	Addr string // host:port, also its domain
}

// URL is the peer-side URL of the relay.
func (r *Relay) URL() string { return "ws://" + r.Addr }

// HTTP is the base URL of the relay's HTTP side.
func (r *Relay) HTTP() string { return "http://" + r.Addr }

// RelayOptions tune StartRelay.
type RelayOptions struct {
	Name  string
	Redis string   // --redis URL, "" for the in-memory store
	Extra []string // more flags
	// PublicOnly leaves out --federation-allow-private: the relay then
	// refuses to federate to 127.0.0.1 (and other private addresses).
	PublicOnly bool
	// Addr is the address to listen on; "" for a free one.
	Addr string
	// Domains are the --domain values; default: the address. The
	// instances of a relay cluster share one list.
	Domains []string
}

// StartRelay starts a relay on a free port that federates over plain HTTP
// to 127.0.0.1 relays (--federation-allow-private unless o.PublicOnly) and
// waits for /healthz.
func (c *Cluster) StartRelay(ctx context.Context, reg *Registrar, o RelayOptions) (*Relay, error) {
	addr := o.Addr
	if addr == "" {
		var err error
		if addr, err = FreeAddr(); err != nil {
			return nil, err
		}
	}
	if o.Name == "" {
		o.Name = "relay"
	}
	domains := strings.Join(o.Domains, ",")
	if domains == "" {
		domains = addr
	}
	args := []string{"--listen", addr, "--domain", domains, "--registrar", reg.URL, "--federation-scheme", "http"}
	if o.Redis != "" {
		args = append(args, "--redis", o.Redis)
	}
	if !o.PublicOnly {
		args = append(args, "--federation-allow-private")
	}
	args = append(args, o.Extra...)
	p, err := c.add(&Proc{Name: o.Name, Path: c.Bins.Relay, Args: args,
		Env: nil})
	if err != nil {
		return nil, err
	}
	r := &Relay{Proc: p, Addr: addr}
	return r, r.WaitReady(ctx)
}

// WaitReady waits for the relay's /healthz.
func (r *Relay) WaitReady(ctx context.Context) error {
	return WaitHTTP(ctx, r.HTTP()+"/healthz", 15*time.Second)
}

// Peer is a running rmb-peer.
type Peer struct {
	*Proc
	Identity    *identity.Identity
	Twin        uint32
	RedisURL    string
	MetricsAddr string
	Relays      []*Relay
}

// StartPeer starts a peer with a fresh ed25519 identity on redisURL
// (redis://host:port/db), connected to relays, and waits until it is
// registered and connected to all of them.
func (c *Cluster) StartPeer(ctx context.Context, name string, reg *Registrar, redisURL string, relays ...*Relay) (*Peer, error) {
	return c.StartPeerArgs(ctx, name, reg, redisURL, nil, relays...)
}

// StartPeerArgs is StartPeer with extra command-line flags.
func (c *Cluster) StartPeerArgs(ctx context.Context, name string, reg *Registrar, redisURL string, extra []string, relays ...*Relay) (*Peer, error) {
	m, err := identity.NewMnemonic()
	if err != nil {
		return nil, err
	}
	id, err := identity.FromSecret(m, identity.Ed25519)
	if err != nil {
		return nil, err
	}
	maddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--key-type", "ed25519", "--redis", redisURL, "--registrar", reg.URL, "--metrics", maddr}
	for _, r := range relays {
		args = append(args, "--relay", r.URL())
	}
	args = append(args, extra...)
	p, err := c.add(&Proc{Name: name, Path: c.Bins.Peer, Args: args, Env: []string{"RMB_MNEMONIC=" + m}})
	if err != nil {
		return nil, err
	}
	pe := &Peer{Proc: p, Identity: id, RedisURL: redisURL, MetricsAddr: maddr, Relays: relays}
	err = WaitFor(ctx, 20*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited:\n%s", name, p.Tail(20))
		}
		t, err := reg.Client.TwinByPublicKey(ctx, id.PublicKey())
		if err != nil {
			return err
		}
		pe.Twin = t.ID
		return nil
	})
	if err != nil {
		return pe, fmt.Errorf("%s did not register: %w", name, err)
	}
	return pe, pe.WaitConnected(ctx, 20*time.Second)
}

// WaitConnected waits until the peer's metrics say every relay connection
// is up.
func (p *Peer) WaitConnected(ctx context.Context, timeout time.Duration) error {
	return WaitFor(ctx, timeout, func() error {
		if p.Exited() {
			return fmt.Errorf("%s exited:\n%s", p.Name, p.Tail(20))
		}
		ms, err := Scrape(ctx, "http://"+p.MetricsAddr+"/metrics")
		if err != nil {
			return err
		}
		up := ms.Sum("rmb_peer_relay_connected", nil)
		if int(up) != len(p.Relays) {
			return fmt.Errorf("%s: %v of %d relay connections up", p.Name, up, len(p.Relays))
		}
		return nil
	})
}

// Metrics scrapes the peer's metrics endpoint.
func (p *Peer) Metrics(ctx context.Context) (Metrics, error) {
	return Scrape(ctx, "http://"+p.MetricsAddr+"/metrics")
}

// Metrics scrapes the relay's /metrics.
func (r *Relay) Metrics(ctx context.Context) (Metrics, error) {
	return Scrape(ctx, r.HTTP()+"/metrics")
}

// WaitHTTP polls url until it answers 200.
func WaitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	return wait.HTTP(ctx, url, timeout)
}

// WaitFor polls f every 50 ms until it succeeds, ctx ends or timeout
// passes; it returns f's last error.
func WaitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	return wait.For(ctx, timeout, f)
}
