package wsframe

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// HandshakeError is a refused opening handshake: the server answered with
// an HTTP status other than 101.
type HandshakeError struct {
	StatusCode int
	Body       string // the start of the response body
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("websocket handshake refused: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), strings.TrimSpace(e.Body))
}

// Dial opens a client connection to a ws:// URL (wss is not supported: this
// is a load-testing client). ctx bounds the TCP connect and the handshake.
func Dial(ctx context.Context, rawURL string, opts *Options) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("websocket dial: scheme %q not supported", u.Scheme)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("websocket dial: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	var kb [16]byte
	rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	fail := func(err error) (*Conn, error) {
		nc.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("websocket dial: %w", err)
	}
	if _, err := io.WriteString(nc, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(err)
	}
	if err := checkUpgrade(resp, key); err != nil {
		resp.Body.Close()
		return fail(err)
	}
	if !stop() {
		return fail(ctx.Err())
	}
	nc.SetDeadline(timeZero)
	var buffered []byte
	if n := br.Buffered(); n > 0 {
		buffered, _ = br.Peek(n)
	}
	return newConn(nc, true, buffered, opts), nil
}

// checkUpgrade checks the server's answer to an opening handshake sent
// with key: 101 with the right headers and no extension. A refusal is a
// HandshakeError with the start of the body.
func checkUpgrade(resp *http.Response, key string) error {
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return &HandshakeError{StatusCode: resp.StatusCode, Body: string(body)}
	}
	if !hasToken(resp.Header, "Upgrade", "websocket") || !hasToken(resp.Header, "Connection", "upgrade") ||
		resp.Header.Get("Sec-WebSocket-Accept") != acceptKey(key) {
		return errors.New("invalid 101 response")
	}
	if resp.Header.Get("Sec-WebSocket-Extensions") != "" {
		return errors.New("server negotiated an extension")
	}
	return nil
}
