// Package nginxtest runs Debian's nginx in front of relay instances, with
// the reverse-proxy configuration that docs/scaling.md documents: the
// server block is rendered from one template (relay.conf.tmpl), both for
// the tests and for the document, so the two cannot drift.
//
//	ng := nginxtest.Start(t, []string{"127.0.0.1:8081", "127.0.0.1:8082"})
//	url := "ws://" + ng.Addr // peers connect here only
//
// nginx runs as `/usr/sbin/nginx -p dir -c dir/nginx.conf -g 'daemon off;'`
// on a temporary directory (error log, pid, temporary files and access
// log all in it) and a free port of 127.0.0.1, and is stopped when the
// test ends. A test that cannot find nginx fails with a message saying how
// to install it; it does not skip.
package nginxtest

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

//go:embed relay.conf.tmpl
var relayConf string

var relayTmpl = template.Must(template.New("relay.conf").Parse(relayConf))

// ErrNoNginx says nginx is not installed.
var ErrNoNginx = errors.New("nginx not found (/usr/sbin/nginx or in PATH): run `make test` (scripts/deps.sh installs it with apt-get) or `apt-get install nginx`")

// RelayConfig fills the documented server block.
type RelayConfig struct {
	Listen     string   // nginx's listen parameter: "443 ssl", "127.0.0.1:8080"
	ServerName string   // the relay cluster's domain
	AccessLog  string   // access log path (logged without query strings)
	Backends   []string // host:port of every relay instance
}

// Render returns the server block (http context) for c.
func (c RelayConfig) Render() (string, error) {
	var sb strings.Builder
	if err := relayTmpl.Execute(&sb, c); err != nil {
		return "", err
	}
	return sb.String(), nil
}

// Documented is the configuration docs/scaling.md shows: three instances
// on 10.0.0.1-3, port 80 (TLS is terminated the same way with
// `listen 443 ssl` and the certificate directives).
var Documented = RelayConfig{
	Listen:     "80",
	ServerName: "relay.example",
	AccessLog:  "/var/log/nginx/rmb-relay.access.log",
	Backends:   []string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"},
}

// debianNginx is where Debian's nginx package puts the binary (a
// variable for the test of a missing nginx).
var debianNginx = "/usr/sbin/nginx"

// Server is a running nginx.
type Server struct {
	Addr string // 127.0.0.1:port, what clients dial
	Dir  string // prefix: nginx.conf, relay.conf, error.log, access.log
	cmd  *exec.Cmd
	done chan struct{}
}

// Binary finds nginx: /usr/sbin/nginx (Debian's, not in a user's PATH)
// or nginx in PATH.
func Binary() (string, error) {
	if fi, err := os.Stat(debianNginx); err == nil && !fi.IsDir() {
		return debianNginx, nil
	}
	if p, err := exec.LookPath("nginx"); err == nil {
		return p, nil
	}
	return "", ErrNoNginx
}

// Start runs nginx in front of backends and registers its stop with
// t.Cleanup; it fails the test when nginx is missing or does not start.
func Start(t testing.TB, backends []string) *Server {
	t.Helper()
	s, err := Run(t.TempDir(), backends)
	if err != nil {
		t.Fatalf("nginxtest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Run starts nginx with its files in dir, waits until it accepts
// connections, and returns it; the caller stops it.
func Run(dir string, backends []string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if len(backends) == 0 {
		return nil, errors.New("nginxtest: no backends")
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr, Dir: dir}
	block, err := RelayConfig{Listen: addr, ServerName: "localhost", AccessLog: filepath.Join(dir, "access.log"), Backends: backends}.Render()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "relay.conf"), []byte(block), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(mainConf(dir)), 0o644); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "-p", dir+"/", "-c", filepath.Join(dir, "nginx.conf"),
		"-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
	out, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		return nil, err
	}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start nginx: %w", err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); out.Close(); close(s.done) }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.done: // exited: stop waiting
			cancel()
		case <-ctx.Done():
		}
	}()
	err = wait.For(ctx, 30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("nginx did not start: %v\n%s", err, s.Logs())
	}
	return s, nil
}

// mainConf is the test's own main configuration around the documented
// block: everything under dir, one worker, no root paths.
func mainConf(dir string) string {
	user := ""
	if os.Geteuid() == 0 {
		// Workers would switch to nobody, who cannot enter the test's
		// private temporary directory.
		user = "user root;\n"
	}
	return fmt.Sprintf(`%sworker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log info;
events { worker_connections 1024; }
http {
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[2]s/relay.conf;
}
`, user, dir)
}

// Logs returns nginx's output and error log, for a failure message.
func (s *Server) Logs() string {
	var sb strings.Builder
	for _, f := range []string{"nginx.out", "error.log"} {
		b, _ := os.ReadFile(filepath.Join(s.Dir, f))
		fmt.Fprintf(&sb, "--- nginx %s ---\n%s\n", f, b)
	}
	return sb.String()
}

// AccessLog returns the access log.
func (s *Server) AccessLog() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "access.log"))
	return string(b)
}

// Stop stops nginx (SIGTERM: fast shutdown, which does not wait for open
// WebSockets; SIGKILL after 5 s); calling it twice is harmless.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
