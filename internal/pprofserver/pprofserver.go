// Package pprofserver serves Go's profiler (net/http/pprof) on a listener
// of its own, for the daemons' --pprof flag. It is off unless asked for,
// and never on a public listener: a profile shows the program's innards
// and costs CPU while it runs, so bind it to 127.0.0.1 or a private
// network.
//
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
package pprofserver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Server is a running profiler endpoint.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen starts serving /debug/pprof/ on addr (host:port; port 0 picks
// one).
func Listen(ctx context.Context, addr string) (*Server, error) {
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No write timeout: a CPU profile or a trace answers after the
	// seconds it was asked for.
	s := &Server{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go s.srv.Serve(ln)
	return s, nil
}

// Addr is the address it listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops it, cutting a profile that is still being taken.
func (s *Server) Close() error { return s.srv.Close() }
