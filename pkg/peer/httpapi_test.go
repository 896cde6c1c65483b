package peer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rmb-go/rmb/pkg/envelope"
	"github.com/rmb-go/rmb/pkg/peer"
)

// startHTTP serves p's HTTP API on a UNIX socket and returns a client
// that dials it.
func startHTTP(t *testing.T, p *testPeer, o *peer.HTTPOptions) *http.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "rmb.sock")
	ln, err := peer.ListenHTTP("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := peer.NewHTTPAPI(p.Peer, o).HTTPServer()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return unixClient(sock)
}

func unixClient(sock string) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "unix", sock)
		}}}
}

func do(t *testing.T, c *http.Client, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://rmb"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func httpCall(t *testing.T, c *http.Client, cmd, data string, exp int, dst ...uint32) []map[string]any {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"ver": 1, "ref": "h1", "cmd": cmd, "exp": exp, "dat": b64(data), "dst": dst, "shm": "text/plain"})
	code, out := do(t, c, "POST", "/call", string(body))
	if code != 200 {
		t.Fatalf("/call %s: %d %s", cmd, code, out)
	}
	var rs []map[string]any
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("/call %s: %v: %s", cmd, err, out)
	}
	return rs
}

// A local program calls and serves through the HTTP API on a UNIX socket,
// without Redis: long-poll /serve, /reply, /call with the JSON of the
// Redis API.
func TestHTTPCallAndServe(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer(func(o *peer.Options) { o.Redis = nil })
	b := s.newPeer(func(o *peer.Options) { o.Serve = []string{"calc"} })
	ca := startHTTP(t, a, nil)
	cb := startHTTP(t, b, &peer.HTTPOptions{MaxServeWait: 2 * time.Second})

	// b's program serves calc by long polls.
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	t.Cleanup(func() { stop(); <-served })
	go func() {
		defer close(served)
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://rmb/serve?cmd=calc&wait=1", nil)
			resp, err := cb.Do(req)
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 204 {
				continue
			}
			if resp.StatusCode != 200 {
				t.Errorf("/serve: %d %s", resp.StatusCode, b)
				return
			}
			var in map[string]any
			json.Unmarshal(b, &in)
			out, _ := json.Marshal(map[string]any{"ver": 1, "ref": in["ref"], "dst": in["src"], "shm": "text/plain",
				"dat": b64("re:" + unb64(t, in["dat"]) + ":" + in["cmd"].(string))})
			rresp, err := cb.Post("http://rmb/reply", "application/json", bytes.NewReader(out))
			if err == nil {
				rresp.Body.Close()
				if rresp.StatusCode != 204 {
					t.Errorf("/reply: %d", rresp.StatusCode)
				}
			}
		}
	}()

	rs := httpCall(t, ca, "calc", "x", 20, b.Twin())
	if len(rs) != 1 || rs[0]["err"] != nil || unb64(t, rs[0]["dat"]) != "re:x:calc" || rs[0]["src"] != twinString(b.Twin()) || rs[0]["ref"] != "h1" {
		t.Fatalf("calc over HTTP: %v", rs)
	}
	// Built-ins, and a command b does not serve: answered with errors in
	// the JSON, not HTTP errors.
	rs = httpCall(t, ca, "rmb.test", "", 20, b.Twin(), a.Twin())
	if len(rs) != 2 || rs[0]["err"] != nil || rs[1]["err"] != nil {
		t.Fatalf("rmb.test over HTTP: %v", rs)
	}
	rs = httpCall(t, ca, "nothing", "", 20, b.Twin())
	if e, _ := rs[0]["err"].(map[string]any); len(rs) != 1 || e == nil || e["code"] != float64(envelope.CodeNotFound) {
		t.Fatalf("unknown command over HTTP: %v", rs)
	}

	// Bad input.
	for _, c := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/call", "{not json", 400, "not the JSON"},
		{"POST", "/call", `{"cmd":"x","dst":[],"dat":""}`, 400, "missing dst"},
		{"POST", "/call", `{"cmd":"x","dst":[0],"dat":""}`, 400, "twin 0"},
		{"POST", "/call", `{"cmd":"x","dst":[1],"dat":"***"}`, 400, "base64"},
		{"POST", "/call", `{"cmd":"","dst":[1],"dat":""}`, 400, "missing cmd"},
		{"POST", "/call", `{"cmd":"x","dst":[1],"dat":"` + strings.Repeat("A", 2<<20) + `"}`, 413, "body over"},
		{"GET", "/call", "", 405, ""},
		{"GET", "/nowhere", "", 404, ""},
		{"GET", "/serve?cmd=bad%20cmd", "", 400, "bad command"},
		{"GET", "/serve?cmd=system.local", "", 400, "reserved"},
		{"GET", "/serve?cmd=rmb.test", "", 400, "peer itself"},
		{"GET", "/serve?cmd=x&wait=soon", "", 400, "wait"},
		{"POST", "/reply", `{"ref":"nope","dst":"7","dat":""}`, 404, "no request waits"},
		{"POST", "/reply", `{"ref":"","dst":"7","dat":""}`, 400, "missing ref"},
		{"POST", "/reply", `[1,2]`, 400, "malformed JSON"},
	} {
		code, out := do(t, ca, c.method, c.path, c.body)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%s %s %.40q: %d %.200s, want %d %q", c.method, c.path, c.body, code, out, c.code, c.want)
		}
	}
	st := a.Stats()
	if st[`rmb_peer_http_refused_total{reason="body_too_big"}`] != 1 || st[`rmb_peer_http_refused_total{reason="bad_request"}`] < 10 {
		t.Errorf("refusals: %v", st)
	}
}

// Waiters are bounded: past MaxWaiters a /serve or /call is refused with
// 503 at once, and counted.
func TestHTTPWaitersBounded(t *testing.T) {
	s := newStack(t, 1)
	a := s.newPeer(func(o *peer.Options) { o.Redis = nil })
	c := startHTTP(t, a, &peer.HTTPOptions{MaxWaiters: 1})
	// One long poll after the other holds the only waiter slot, however
	// slowly the machine runs.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if resp, err := c.Get("http://rmb/serve?cmd=idle&wait=30"); err == nil {
				resp.Body.Close()
			}
		}
	}()
	waitFor(t, 20*time.Second, func() error {
		code, out := do(t, c, "GET", "/serve?cmd=other&wait=0", "")
		if code != 503 {
			return fmt.Errorf("second waiter: %d %s", code, out)
		}
		return nil
	})
	if n := a.Stats()[`rmb_peer_http_refused_total{reason="waiters"}`]; n < 1 {
		t.Fatalf("waiters refused %v", n)
	}
}

// The HTTP API listens only on a unix socket or a loopback address.
func TestHTTPListenLoopbackOnly(t *testing.T) {
	for _, bad := range []string{"0.0.0.0:0", "10.1.2.3:8080", ":8080", "example.com:80", "unix://relative.sock", "unix://", "nonsense"} {
		if ln, err := peer.ListenHTTP(bad); err == nil {
			ln.Close()
			t.Errorf("ListenHTTP(%q) accepted", bad)
		}
	}
	ln, err := peer.ListenHTTP("0.0.0.0:0")
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("non-loopback refusal does not say why: %v", err)
	}
	for _, good := range []string{"127.0.0.1:0", "localhost:0"} {
		ln, err = peer.ListenHTTP(good)
		if err != nil {
			t.Fatalf("ListenHTTP(%q): %v", good, err)
		}
		ln.Close()
	}
	// A socket in use is not taken over; a stale one is replaced.
	sock := "unix://" + filepath.Join(t.TempDir(), "s.sock")
	ln, err = peer.ListenHTTP(sock)
	if err != nil {
		t.Fatal(err)
	}
	inUse := ln
	go func() {
		for {
			c, err := inUse.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if ln2, err := peer.ListenHTTP(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		if ln2 != nil {
			ln2.Close()
		}
		t.Fatalf("second listener on a socket in use: %v", err)
	}
	inUse.(*net.UnixListener).SetUnlinkOnClose(false)
	inUse.Close()
	ln, err = peer.ListenHTTP(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()
}
