// Package wsframe is a small RFC 6455 WebSocket codec for the hot paths of
// the relay and the peer: a server handshake (Upgrade), two client
// handshakes (Dial, plain ws:// for load tools; DialHTTP, which lets an
// http.Transport run the handshake so proxies and TLS settings apply, for
// the peer), and a Conn that reads whole messages and writes frames into a
// buffer that the caller flushes when it has nothing more to send.
//
// coder/websocket flushes every message (one write syscall per envelope)
// and allocates, and sets up context timers, on every read and write,
// which on a relay forwarding hundreds of thousands of small envelopes per
// second is most of the cost, and a tenth of a peer's outside signing.
// The tests use it as the independent implementation to interoperate
// with. This package does only what the relay and the peer need:
//
//   - no extensions (permessage-deflate is never negotiated) and no
//     subprotocols;
//   - text and binary messages, fragmented or not, up to a read limit (a
//     larger message is answered with close 1009 and ErrMessageTooBig);
//   - ping frames are answered with pong frames from inside ReadMessage,
//     pong frames are accepted and ignored (any frame is a sign of life);
//   - the close handshake in both directions, with CloseError carrying the
//     peer's code;
//   - frames from a client must be masked and frames from a server must not
//     be (1002 otherwise); a client masks every frame it writes.
//
// # Buffers
//
// An idle connection holds no buffer. On TCP (and other connections that
// expose syscall.RawConn; not a DialHTTP connection) the reader takes a pooled read buffer only when
// the socket is readable and gives it back when the socket runs dry; the
// writer takes a pooled write buffer at the first frame and gives it back
// at Flush. So 10,000 idle sessions cost neither 10,000 read buffers nor
// 10,000 write buffers.
//
// # Concurrency
//
// ReadMessage must be called by one goroutine at a time. WriteMessage,
// Flush, Ping, Close and CloseNow may be called concurrently with each
// other and with ReadMessage: writes are serialized by a mutex, and every
// write to the network has a deadline of Options.WriteTimeout.
package wsframe
