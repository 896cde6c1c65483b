// Package redistest starts a private redis-server for tests (and the load
// tool): its own
// directory, a free port on 127.0.0.1, no persistence unless asked, stopped
// when the test ends. A test that cannot find redis-server fails with a
// message saying how to install it; it does not skip.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is a running redis-server.
type Server struct {
	Addr   string // host:port
	Socket string // path of its unix socket, if Options.Socket
	Dir    string
	cmd    *exec.Cmd
	opts   Options
}

// Options tune the server. The zero value is an in-memory server.
type Options struct {
	// AOF turns on the append-only file (appendfsync always), so data
	// survives a kill -9 and Restart.
	AOF bool
	// Socket makes the server listen on a unix socket in its directory
	// too (Server.Socket). The directory's path must be short.
	Socket bool
}

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Start starts a server and registers its stop with t.Cleanup.
func Start(t testing.TB, opts *Options) *Server {
	t.Helper()
	s, err := Run(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// ErrNoRedis says redis-server is not installed.
var ErrNoRedis = errors.New("redis-server not found in PATH: run `make test` (it installs redis-server with apt-get) or `apt-get install redis-server`")

// Run starts a server keeping its files in dir, for programs (the load
// tool) as well as tests. The caller stops it.
func Run(dir string, opts *Options) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNoRedis
	}
	s := &Server{Dir: dir}
	if opts != nil {
		s.opts = *opts
	}
	if s.opts.Socket {
		s.Socket = filepath.Join(dir, "redis.sock")
		if len(s.Socket) > 100 {
			return nil, fmt.Errorf("unix socket path %s is too long for a sockaddr", s.Socket)
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := s.start(bin); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start(bin string) error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{
		"--port", port, "--bind", "127.0.0.1", "--dir", s.Dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "yes",
		"--loglevel", "warning", "--logfile", filepath.Join(s.Dir, "redis.log"),
	}
	if s.Socket != "" {
		args = append(args, "--unixsocket", s.Socket, "--unixsocketperm", "700")
	}
	if s.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr) == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
	s.Stop()
	return fmt.Errorf("redis-server on %s did not answer PING within 10s; log:\n%s", s.Addr, log)
}

// Kill stops the server with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Pause freezes the server (SIGSTOP), as a stalled host or a long fork
// would: connections stay open, nothing is answered. Resume lets it go on
// with every command that reached it meanwhile.
func (s *Server) Pause() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume undoes Pause (SIGCONT).
func (s *Server) Resume() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Stop stops the server; calling it twice is harmless.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
		s.cmd = nil
	}
}

// Restart starts the server again on the same address and directory (the
// data survives when AOF is on).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.start(bin); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
}

// ping sends PING over RESP and waits for +PONG.
func ping(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
