package wsframe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"
)

// echoServer serves Upgrade and echoes every message; the last read error is
// sent on errs.
func echoServer(t *testing.T, opts *Options, errs chan<- error) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Upgrade(w, r, opts)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			op, b, err := c.ReadMessage(nil)
			if err != nil {
				if errs != nil {
					errs <- err
				}
				c.Close(StatusNormalClosure, "", 200*time.Millisecond)
				return
			}
			if err := c.WriteMessage(op, b); err != nil {
				return
			}
			if err := c.Flush(); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// The server side against coder/websocket as the client.
func TestServerInterop(t *testing.T) {
	errs := make(chan error, 1)
	u := echoServer(t, &Options{ReadLimit: 3 << 20}, errs)
	c, _, err := websocket.Dial(ctx(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	defer c.CloseNow()
	for _, n := range []int{0, 1, 7, 8, 125, 126, 127, 1000, 65535, 65536, 70000, 2 << 20} {
		for _, typ := range []websocket.MessageType{websocket.MessageBinary, websocket.MessageText} {
			msg := bytes.Repeat([]byte{byte(n)}, n)
			for i := range msg {
				msg[i] = byte(i * 7)
			}
			if typ == websocket.MessageText {
				msg = bytes.Repeat([]byte("a"), n)
			}
			if err := c.Write(ctx(t), typ, msg); err != nil {
				t.Fatal(err)
			}
			gt, got, err := c.Read(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if gt != typ || !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes %v: echo differs (type %v, %d bytes)", n, typ, gt, len(got))
			}
		}
	}
	// A fragmented message, written in pieces.
	w, err := c.Writer(ctx(t), websocket.MessageBinary)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 5 {
		p := bytes.Repeat([]byte{byte('a' + i)}, 100*i+1)
		want = append(want, p...)
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		// coder/websocket writes a frame per Write once flushed.
		if f, ok := any(w).(interface{ Flush() error }); ok {
			f.Flush()
		}
	}
	w.Close()
	if _, got, err := c.Read(ctx(t)); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("fragmented: %v, %d bytes", err, len(got))
	}
	// Pings from the client are answered while the server reads.
	readCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go c.Read(readCtx)
	if err := c.Ping(ctx(t)); err != nil {
		t.Fatalf("ping: %v", err)
	}
	// Close from the client reaches the server as a CloseError.
	c.Close(4001, "bye")
	select {
	case err := <-errs:
		if CloseStatus(err) != 4001 || err.(CloseError).Reason != "bye" {
			t.Fatalf("server read %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not see the close")
	}
}

// serveOne upgrades one connection and hands it to the test.
func serveOne(t *testing.T, opts *Options) (string, <-chan *Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Upgrade(w, r, opts)
		if err != nil {
			return
		}
		conns <- c
		<-done
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	return "ws" + strings.TrimPrefix(srv.URL, "http"), conns
}

func TestServerCloseCodesAndPing(t *testing.T) {
	var pongs atomic.Int32
	u, conns := serveOne(t, &Options{ReadLimit: 100, OnPong: func() { pongs.Add(1) }})
	c, _, err := websocket.Dial(ctx(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	s := <-conns
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := s.ReadMessage(nil); err != nil {
				readErr <- err
				return
			}
		}
	}()
	clientIn := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				clientIn <- err
				return
			}
		}
	}()
	if err := s.Ping(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for pongs.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no pong")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Over the read limit: close 1009.
	c.Write(ctx(t), websocket.MessageBinary, make([]byte, 101))
	if err := <-readErr; !errors.Is(err, ErrMessageTooBig) {
		t.Fatalf("server read: %v", err)
	}
	go s.Close(StatusNormalClosure, "", time.Second)
	if err := <-clientIn; websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("client read: %v", err)
	}
}

func TestServerInitiatedClose(t *testing.T) {
	u, conns := serveOne(t, nil)
	c, _, err := websocket.Dial(ctx(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	s := <-conns
	go func() {
		for {
			if _, _, err := s.ReadMessage(nil); err != nil {
				return
			}
		}
	}()
	// Coalesced writes: many messages, one flush.
	for i := range 100 {
		if err := s.WriteMessage(OpBinary, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if s.Buffered() == 0 {
		t.Fatal("nothing buffered")
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		_, b, err := c.Read(ctx(t))
		if err != nil || string(b) != fmt.Sprint(i) {
			t.Fatalf("message %d: %q %v", i, b, err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close(4000, "replaced", 5*time.Second) }()
	_, _, err = c.Read(ctx(t))
	if websocket.CloseStatus(err) != 4000 {
		t.Fatalf("client read: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("Close waited for its timeout despite the client's answer")
	}
	if err := s.WriteMessage(OpBinary, nil); err == nil {
		t.Fatal("write after close succeeded")
	}
}

// The client side against coder/websocket as the server: dialed by Dial,
// and by DialHTTP plain, over TLS, and over TLS through an HTTP proxy
// (net/http tunnels https with CONNECT).
func TestClientInterop(t *testing.T) {
	for _, mode := range []string{"Dial", "DialHTTP", "DialHTTP TLS", "DialHTTP proxy"} {
		t.Run(mode, func(t *testing.T) { testClientInterop(t, mode) })
	}
}

func testClientInterop(t *testing.T, mode string) {
	srvErr := make(chan error, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.SetReadLimit(-1)
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				srvErr <- err
				return
			}
			if err := c.Write(r.Context(), typ, b); err != nil {
				return
			}
		}
	})
	var srv *httptest.Server
	if strings.HasPrefix(mode, "DialHTTP TLS") || mode == "DialHTTP proxy" {
		srv = httptest.NewTLSServer(handler)
	} else {
		srv = httptest.NewServer(handler)
	}
	defer srv.Close()
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/path?query=1"
	opts := &Options{ReadLimit: 4 << 20}
	var (
		c   *Conn
		err error
	)
	// The dial context bounds the handshake only: it ends right after.
	dctx, cancel := context.WithTimeout(ctx(t), 10*time.Second)
	switch mode {
	case "Dial":
		c, err = Dial(dctx, u, opts)
	case "DialHTTP":
		c, _, err = DialHTTP(dctx, &http.Transport{}, u, opts)
	case "DialHTTP TLS":
		c, _, err = DialHTTP(dctx, srv.Client().Transport.(*http.Transport), u, opts)
	case "DialHTTP proxy":
		proxy, tunnels := connectProxy(t)
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.Proxy = http.ProxyURL(proxy)
		c, _, err = DialHTTP(dctx, tr, u, opts)
		defer func() {
			if tunnels.Load() != 1 {
				t.Errorf("%d tunnels through the proxy, want 1", tunnels.Load())
			}
		}()
	}
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	var buf []byte
	for _, n := range []int{0, 3, 125, 126, 65536, 100000, 3 << 20} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(i*13 + n)
		}
		// Several messages per flush, written while the echoes are read:
		// 9 MiB written before reading could fill both directions'
		// socket buffers and stall the echo server and us.
		written := make(chan error, 1)
		go func() {
			for range 3 {
				if err := c.WriteMessage(OpBinary, msg); err != nil {
					written <- err
					return
				}
			}
			written <- c.Flush()
		}()
		for range 3 {
			op, got, err := c.ReadMessage(buf)
			if err != nil || op != OpBinary || !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: %v, op %d, %d bytes back", n, err, op, len(got))
			}
			buf = got
		}
		if err := <-written; err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Ping(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadMessage(nil)
		done <- err
	}()
	c.Close(StatusNormalClosure, "done", 5*time.Second)
	if err := <-srvErr; websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("server read: %v", err)
	}
	if err := <-done; CloseStatus(err) != StatusNormalClosure {
		t.Fatalf("client read: %v", err)
	}
}

// connectProxy is an HTTP proxy that serves CONNECT only, and counts the
// tunnels it opened.
func connectProxy(t *testing.T) (*url.URL, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		n.Add(1)
		w.WriteHeader(http.StatusOK)
		down, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		if b := buf.Reader.Buffered(); b > 0 {
			p, _ := buf.Reader.Peek(b)
			up.Write(p)
		}
		go func() { io.Copy(up, down); up.Close() }()
		io.Copy(down, up)
		down.Close()
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u, &n
}

func TestDialHTTPRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no token", http.StatusUnauthorized)
	}))
	defer srv.Close()
	_, resp, err := DialHTTP(ctx(t), &http.Transport{}, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || !strings.Contains(he.Body, "no token") || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("got %v, %v", err, resp)
	}
	if _, _, err := DialHTTP(ctx(t), &http.Transport{}, "http://x", nil); err == nil {
		t.Fatal("an http:// URL was dialed")
	}
	// A 101 with the wrong accept key, and one negotiating an extension.
	for name, h := range map[string]http.Header{
		"invalid 101": {"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Accept": {"nope"}},
		"extension":   {"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "Sec-Websocket-Extensions": {"permessage-deflate"}},
	} {
		bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for k, v := range h {
				w.Header()[k] = v
			}
			if name == "extension" {
				w.Header().Set("Sec-Websocket-Accept", acceptKey(r.Header.Get("Sec-WebSocket-Key")))
			}
			w.WriteHeader(http.StatusSwitchingProtocols)
		}))
		_, _, err := DialHTTP(ctx(t), &http.Transport{}, "ws"+strings.TrimPrefix(bad.URL, "http"), nil)
		bad.Close()
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestDialRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no token", http.StatusUnauthorized)
	}))
	defer srv.Close()
	_, err := Dial(ctx(t), "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || !strings.Contains(he.Body, "no token") {
		t.Fatalf("got %v", err)
	}
}

func TestUpgradeRefusals(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, err := Upgrade(w, r, nil); err == nil {
			c.CloseNow()
		}
	}))
	defer srv.Close()
	good := map[string]string{"Connection": "keep-alive, Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
	for _, tc := range []struct {
		name   string
		method string
		del    string
		set    [2]string
		want   int
	}{
		{"ok", "GET", "", [2]string{}, 101},
		{"no upgrade", "GET", "Upgrade", [2]string{}, 400},
		{"no connection", "GET", "Connection", [2]string{}, 400},
		{"post", "POST", "", [2]string{}, 405},
		{"version", "GET", "", [2]string{"Sec-WebSocket-Version", "8"}, 426},
		{"no key", "GET", "Sec-WebSocket-Key", [2]string{}, 400},
		{"short key", "GET", "", [2]string{"Sec-WebSocket-Key", "c2hvcnQ="}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL, nil)
			for k, v := range good {
				req.Header.Set(k, v)
			}
			if tc.del != "" {
				req.Header.Del(tc.del)
			}
			if tc.set[0] != "" {
				req.Header.Set(tc.set[0], tc.set[1])
			}
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == 101 && resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
				t.Fatalf("accept %q", resp.Header.Get("Sec-WebSocket-Accept"))
			}
		})
	}
}

// rawClient connects with a handshake but writes frames by hand.
func rawClient(t *testing.T, u string) net.Conn {
	t.Helper()
	c, err := Dial(ctx(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c.nc
}

func TestProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"unmasked", []byte{0x82, 0x01, 'x'}},
		{"rsv", []byte{0xc2, 0x80, 0, 0, 0, 0}},
		{"long ping", append([]byte{0x89, 0xfe, 0, 126, 0, 0, 0, 0}, make([]byte, 126)...)},
		{"fragmented ping", []byte{0x09, 0x80, 0, 0, 0, 0}},
		{"bare continuation", []byte{0x80, 0x80, 0, 0, 0, 0}},
		{"unknown opcode", []byte{0x83, 0x80, 0, 0, 0, 0}},
		{"interleaved message", []byte{0x02, 0x80, 0, 0, 0, 0, 0x82, 0x80, 0, 0, 0, 0}},
		{"bad close code", []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := make(chan error, 1)
			u := echoServer(t, nil, errs)
			nc := rawClient(t, u)
			nc.Write(tc.frame)
			var pe ws.ProtocolError
			if err := <-errs; !errors.As(err, &pe) {
				t.Fatalf("server read: %v", err)
			}
			// The server answers with close 1002.
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(nc)
			if len(b) < 4 || b[0] != 0x88 || int(b[2])<<8|int(b[3]) != 1002 {
				t.Fatalf("server sent % x", b)
			}
		})
	}
}
