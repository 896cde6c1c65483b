package wsframe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/gobwas/ws"
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

// Dial opens a client connection to a ws:// or wss:// URL with gobwas/ws's
// Dialer (no proxy: this is the load tools' client; the peer uses
// DialHTTP). ctx bounds the TCP connect and the handshake.
func Dial(ctx context.Context, rawURL string, opts *Options) (*Conn, error) {
	var refused *HandshakeError
	d := ws.Dialer{OnStatusError: func(status int, _ []byte, resp io.Reader) {
		refused = &HandshakeError{StatusCode: status}
		if r, err := http.ReadResponse(bufio.NewReader(io.LimitReader(resp, 64<<10)), nil); err == nil {
			body, _ := io.ReadAll(io.LimitReader(r.Body, 1024))
			refused.Body = string(body)
		}
	}}
	nc, br, _, err := d.Dial(ctx, rawURL)
	if refused != nil {
		return nil, fmt.Errorf("websocket dial: %w", refused)
	}
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("websocket dial: %w", err)
	}
	// Frames the server sent right behind its answer.
	var buffered []byte
	if br != nil {
		buffered, _ = br.Peek(br.Buffered())
		buffered = append([]byte(nil), buffered...)
		ws.PutReader(br)
	}
	return newConn(nc, true, buffered, opts), nil
}

// checkUpgrade checks the server's answer to DialHTTP's opening handshake
// sent with key: 101 with the right headers and no extension. A refusal is
// a HandshakeError with the start of the body.
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

// hasToken reports whether a comma-separated header holds token
// (case-insensitively).
func hasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
