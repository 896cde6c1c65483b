package wsframe

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// DialHTTP opens a client connection to a ws:// or wss:// URL, letting a
// clone of tr run the opening handshake: its proxy, TLS and dial settings
// apply, as they would to any HTTP request. The frames then go over the
// upgraded connection. ctx bounds the handshake only. On a refused
// handshake the response is returned with the error (its body closed).
func DialHTTP(ctx context.Context, tr *http.Transport, rawURL string, opts *Options) (*Conn, *http.Response, error) {
	u := rawURL
	switch {
	case strings.HasPrefix(u, "ws://"):
		u = "http://" + u[len("ws://"):]
	case strings.HasPrefix(u, "wss://"):
		u = "https://" + u[len("wss://"):]
	default:
		return nil, nil, fmt.Errorf("websocket dial: %q is not a ws:// or wss:// URL", rawURL)
	}
	// The TCP connection under the upgraded stream (and under TLS), for
	// deadlines: the 101 response body offers none.
	var (
		mu  sync.Mutex
		raw net.Conn
	)
	tr = tr.Clone()
	base := tr.DialContext
	if base == nil {
		base = (&net.Dialer{}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := base(ctx, network, addr)
		if err == nil {
			mu.Lock()
			raw = c
			mu.Unlock()
		}
		return c, err
	}
	// HTTP/2 cannot upgrade to a WebSocket.
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("websocket dial: %w", err)
	}
	var kb [16]byte
	rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("websocket dial: %w", err)
	}
	fail := func(err error) (*Conn, *http.Response, error) {
		resp.Body.Close()
		return nil, resp, fmt.Errorf("websocket dial: %w", err)
	}
	if err := checkUpgrade(resp, key); err != nil {
		return fail(err)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	mu.Lock()
	nc := raw
	mu.Unlock()
	if !ok || nc == nil {
		return fail(errors.New("the HTTP client gave no upgraded connection"))
	}
	return newConn(&upgraded{ReadWriteCloser: rwc, raw: nc}, true, nil, opts), resp, nil
}

// upgraded is the stream of a 101 response as a net.Conn: reads and
// writes go through the response body (TLS included, and bytes the HTTP
// client had already buffered), deadlines and addresses are the TCP
// connection's.
type upgraded struct {
	io.ReadWriteCloser
	raw net.Conn
}

func (u *upgraded) LocalAddr() net.Addr                { return u.raw.LocalAddr() }
func (u *upgraded) RemoteAddr() net.Addr               { return u.raw.RemoteAddr() }
func (u *upgraded) SetDeadline(t time.Time) error      { return u.raw.SetDeadline(t) }
func (u *upgraded) SetReadDeadline(t time.Time) error  { return u.raw.SetReadDeadline(t) }
func (u *upgraded) SetWriteDeadline(t time.Time) error { return u.raw.SetWriteDeadline(t) }
