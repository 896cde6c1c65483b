package nginxtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

// nginx starts on the rendered configuration and proxies to a backend,
// with X-Forwarded-For and the Host the client sent.
func TestStartProxies(t *testing.T) {
	got := make(chan http.Header, 1)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		got <- h
		io.WriteString(w, "ok")
	}))
	defer be.Close()
	s := Start(t, []string{strings.TrimPrefix(be.URL, "http://")})
	resp, err := http.Get("http://" + s.Addr + "/healthz?secret-token")
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Logs())
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("body %q", b)
	}
	h := <-got
	if h.Get("X-Forwarded-For") != "127.0.0.1" || h.Get("Host") != s.Addr {
		t.Fatalf("backend saw X-Forwarded-For %q, Host %q", h.Get("X-Forwarded-For"), h.Get("Host"))
	}
	// nginx writes the line once the request is done: poll.
	err = wait.For(context.Background(), 20*time.Second, func() error {
		if log := s.AccessLog(); !strings.Contains(log, "/healthz") {
			return fmt.Errorf("access log without the request:\n%s", log)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if log := s.AccessLog(); strings.Contains(log, "secret-token") {
		t.Fatalf("access log holds the query string:\n%s", log)
	}
}

// The document shows exactly the template rendered with Documented.
func TestDocumented(t *testing.T) {
	want, err := Documented.Render()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/scaling.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```nginx\n"+want+"```\n") {
		t.Fatalf("docs/scaling.md does not hold the configuration the tests use; put this in a ```nginx block:\n%s", want)
	}
}

func TestRunRefusesNoBackends(t *testing.T) {
	if _, err := Run(t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "no backends") {
		t.Fatalf("err %v", err)
	}
}

// Without nginx, Run says how to install it.
func TestRunWithoutNginx(t *testing.T) {
	old := debianNginx
	debianNginx = "/nonexistent/nginx"
	defer func() { debianNginx = old }()
	t.Setenv("PATH", t.TempDir())
	_, err := Run(t.TempDir(), []string{"127.0.0.1:1"})
	if !errors.Is(err, ErrNoNginx) || !strings.Contains(err.Error(), "apt-get install nginx") {
		t.Fatalf("err %v", err)
	}
}
