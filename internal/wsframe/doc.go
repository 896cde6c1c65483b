// Package wsframe is the WebSocket connection of the relay and the peer.
//
// Server side (the relay):
//
//	c, err := wsframe.Upgrade(w, r, &wsframe.Options{ReadLimit: 1 << 20, WriteTimeout: 10 * time.Second})
//	// answered with 400/405/426 and err when r is not a valid handshake
//	op, msg, err := c.ReadMessage(buf)   // one goroutine; answers pings
//	c.WriteMessage(wsframe.OpBinary, p)  // buffered, any goroutine
//	c.Flush()                            // when there is nothing more to send now
//	c.Close(wsframe.StatusNormalClosure, "bye", time.Second)
//
// Client side: DialHTTP(ctx, transport, "wss://...", opts) lets a clone of
// an http.Transport run the opening handshake, so its proxy, TLS and dial
// settings apply (the peer); Dial(ctx, "ws://...", opts) dials directly (the
// load tools). ReadMessage returns a CloseError when the peer closed
// (CloseStatus(err) gives its code, -1 for any other error) and
// ErrMessageTooBig, after closing with 1009, for a message over
// Options.ReadLimit. ReadMessage must be called by one goroutine at a time;
// WriteMessage, Flush, Ping, Close and CloseNow may be called from any
// goroutine: writes are serialized by a mutex, and every write to the
// network has a deadline of Options.WriteTimeout.
//
// What it speaks: no extensions (permessage-deflate is never negotiated),
// no subprotocols; text and binary messages, fragmented or not; pings
// answered from inside ReadMessage, pongs passed to Options.OnPong; the
// close handshake both ways; frames from a client must be masked and frames
// from a server must not be (1002 otherwise).
//
// # What is a library's and what is ours
//
// gobwas/ws does the server handshake (HTTPUpgrader), Dial's handshake
// (Dialer), the opcodes and frame header type, the checks of every header
// against RFC 6455 (CheckHeader: reserved bits and opcodes, masking,
// control frames, fragmentation), masking (Cipher, 2-8x faster than ours was
// on 256 B-4 KiB) and close frame bodies. coder/websocket gives the close
// codes, CloseError and CloseStatus (and is the independent implementation
// the tests interoperate with). docs/benchmarks.md ("Codecs: hand-written
// against libraries") has the measurements. Ours, because no library does
// it without costing every envelope or every idle session:
//
//   - The Conn around the frames: no library's connection both holds no
//     buffer while idle and coalesces writes until an explicit Flush.
//     gorilla/websocket holds a 4 KiB read buffer per connection for its
//     life; gobwas/ws's wsutil reads either straight from the socket (a read
//     syscall per header and per payload) or through a bufio.Reader held for
//     life, and its Writer holds its buffer for life; coder/websocket holds
//     both, flushes every message (one write syscall per envelope) and sets
//     up context timers on every read and write. The relay's budget is 8 KiB
//     per idle session, everything included.
//   - The read buffer (reader.go, reader_unix.go): on TCP (and other
//     connections that expose syscall.RawConn; not a DialHTTP connection)
//     a pooled buffer is taken only when the socket is readable and given
//     back when it runs dry; the write buffer is taken at the first frame and
//     given back at Flush. So 10,000 idle sessions hold neither 10,000 read
//     buffers nor 10,000 write buffers.
//   - parseHeader and appendHeader: they parse from and append to our
//     buffers. ws.ReadHeaderBuffer reads through an io.Reader in two calls
//     (25 ns against 10 ns per frame); ws.WriteHeaderBuffer writes through
//     an io.Writer (8.5 ns against 1 ns).
//   - A message's buffer grows as its bytes arrive, never to the length a
//     frame announces (a peer announcing 1 MiB and sending 30 bytes costs
//     30 bytes), with a read limit over all fragments answered by 1009.
//   - validWireCode: ws.CheckCloseFrameData refuses 1012-1014 and accepts
//     5000 and over.
//   - DialHTTP's handshake: no library runs it through an http.Transport
//     and hands back the upgraded stream (coder/websocket does run it so,
//     but keeps the stream inside its own Conn).
package wsframe
