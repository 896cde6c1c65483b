package wsframe

import (
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/gobwas/ws"
)

// Upgrade validates a client's opening handshake, answers it with 101
// Switching Protocols over the hijacked connection and returns the server
// side of the WebSocket. The handshake is gobwas/ws's HTTPUpgrader: a
// request that is not a valid handshake is answered with an HTTP error (400,
// 405 or 426) and an error is returned. No extension or subprotocol is
// negotiated; the Origin is not checked. The 101 answer is written within
// Options.WriteTimeout.
func Upgrade(w http.ResponseWriter, r *http.Request, opts *Options) (*Conn, error) {
	o := opts.withDefaults()
	nc, brw, _, err := ws.HTTPUpgrader{Timeout: o.WriteTimeout}.Upgrade(r, w)
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		return nil, fmt.Errorf("websocket upgrade: %w", err)
	}
	// Frames the client sent right behind its request.
	var buffered []byte
	if n := brw.Reader.Buffered(); n > 0 {
		buffered, _ = brw.Reader.Peek(n)
	}
	return newConn(nc, false, buffered, &o), nil
}

// acceptGUID is the GUID of RFC 6455 §1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// acceptKey is the Sec-WebSocket-Accept for key, for DialHTTP, whose
// handshake no library runs (gobwas/ws keeps its own unexported).
func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}
