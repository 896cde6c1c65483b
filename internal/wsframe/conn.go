package wsframe

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Options configure a Conn. Zero fields mean the documented defaults.
type Options struct {
	// ReadLimit bounds one message, all its fragments together; a larger
	// message is answered with close 1009 and ReadMessage returns
	// ErrMessageTooBig. Default 1 MiB.
	ReadLimit int
	// WriteTimeout bounds every write to the network; a write that times
	// out fails the connection. Default 10 seconds.
	WriteTimeout time.Duration
	// OnPong, if set, is called by the reading goroutine for every pong
	// frame received.
	OnPong func()
}

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.ReadLimit <= 0 {
		v.ReadLimit = 1 << 20
	}
	if v.WriteTimeout <= 0 {
		v.WriteTimeout = 10 * time.Second
	}
	return v
}

// Sizes of the pooled buffers.
const (
	readBufSize  = 16 << 10
	writeBufSize = 16 << 10
	// flushAt: WriteMessage flushes on its own once this much is buffered.
	flushAt = 64 << 10
	// directWrite: a payload this large is not copied into the write
	// buffer but written after it with one vectored write (server only:
	// a client has to mask a copy anyway).
	directWrite = 8 << 10
)

var (
	readPool  = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}
	writePool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}
)

// Conn is one WebSocket connection, server or client side.
//
// ReadMessage must not be called concurrently with itself; every other
// method may be called from any goroutine.
type Conn struct {
	// Set at creation, read-only afterwards.
	nc     net.Conn
	client bool // we mask what we write and expect unmasked frames
	opts   Options

	// Owned by the goroutine in ReadMessage (and by Close once readerDone
	// is closed).
	rd         reader
	skip       int64 // payload bytes of an abandoned frame still on the wire
	readErr    error // sticky: the error that ended reading
	closeRcvd  bool  // the peer's close frame was read
	readerDone chan struct{}

	wmu       sync.Mutex // guards the following
	wbuf      *[]byte    // pending frames; nil when there are none
	raw       *rawWriter // for TryFlush, made by the first; noRaw without a raw socket
	wErr      error      // sticky: the error that ended writing
	closeSent bool

	closed atomic.Bool // CloseNow was called
}

func newConn(nc net.Conn, client bool, buffered []byte, opts *Options) *Conn {
	c := &Conn{nc: nc, client: client, opts: opts.withDefaults(), readerDone: make(chan struct{})}
	c.rd.init(nc, buffered)
	return c
}

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.nc }

// ReadMessage reads the next text or binary message, answering pings and
// handling the close handshake on the way. The payload is appended to
// dst[:0] (dst may be nil: then a new slice of the message's size is
// returned, which the caller owns).
//
// When the peer closes the connection the error is a CloseError. After an
// error, every later call returns the same error.
func (c *Conn) ReadMessage(dst []byte) (Opcode, []byte, error) {
	if c.readErr != nil {
		return 0, nil, c.readErr
	}
	op, msg, err := c.readMessage(dst[:0])
	if err != nil {
		c.failRead(err)
		return 0, nil, err
	}
	return op, msg, nil
}

func (c *Conn) readMessage(msg []byte) (Opcode, []byte, error) {
	var msgOp Opcode
	inMsg := false
	for {
		h, err := c.readHeader()
		if err != nil {
			return 0, nil, err
		}
		state := ws.StateServerSide
		if c.client {
			state = ws.StateClientSide
		}
		if inMsg {
			state |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, state); err != nil {
			return 0, nil, err
		}
		if h.OpCode.IsControl() {
			var buf [ws.MaxControlFramePayloadSize]byte
			p := buf[:h.Length]
			if err := c.readPayload(p, h); err != nil {
				return 0, nil, err
			}
			switch h.OpCode {
			case OpPing:
				if err := c.writeControl(OpPong, p); err != nil && !errors.Is(err, ErrClosed) {
					return 0, nil, err
				}
			case OpPong:
				if c.opts.OnPong != nil {
					c.opts.OnPong()
				}
			case OpClose:
				return 0, nil, c.handleClose(p)
			}
			continue
		}
		if !inMsg {
			msgOp, inMsg = h.OpCode, true
		}
		if int64(len(msg))+h.Length > int64(c.opts.ReadLimit) {
			c.skip = h.Length
			c.sendClose(StatusMessageTooBig, "message too big")
			return 0, nil, ErrMessageTooBig
		}
		if msg, err = c.appendPayload(msg, h); err != nil {
			return 0, nil, err
		}
		if h.Fin {
			return msgOp, msg, nil
		}
	}
}

// MessageBuffered reports whether the next message is in the read buffer
// whole, as one data frame: then the next ReadMessage returns without
// waiting for the network. Only the goroutine in ReadMessage may call it.
func (c *Conn) MessageBuffered() bool {
	if c.readErr != nil || c.skip > 0 {
		return false
	}
	b := c.rd.buffered()
	h, n, err := parseHeader(b)
	return err == nil && n > 0 && h.Fin && !h.OpCode.IsControl() && int64(len(b)-n) >= h.Length
}

// handleClose answers the peer's close frame and ends the connection.
func (c *Conn) handleClose(p []byte) error {
	ce := CloseError{Code: StatusNoStatusRcvd}
	switch {
	case len(p) == 1:
		return ws.ProtocolError("close frame with a one-byte payload")
	case len(p) >= 2:
		ce.Code = StatusCode(int(p[0])<<8 | int(p[1]))
		ce.Reason = string(p[2:])
		if !validWireCode(ce.Code) || !utf8.ValidString(ce.Reason) {
			return ws.ProtocolError("invalid close frame")
		}
	}
	c.closeRcvd = true
	// Echo the code (RFC 6455 §5.5.1) unless we started the handshake.
	c.wmu.Lock()
	if !c.closeSent && c.wErr == nil {
		c.closeSent = true
		if ce.Code == StatusNoStatusRcvd {
			c.writeFrame(OpClose, nil)
		} else {
			c.writeFrame(OpClose, p[:2])
		}
		c.flushLocked()
	}
	c.wmu.Unlock()
	c.CloseNow()
	return ce
}

// failRead ends reading with err: a protocol violation is answered with
// close 1002.
func (c *Conn) failRead(err error) {
	c.readErr = err
	var pe ws.ProtocolError
	if errors.As(err, &pe) {
		c.sendClose(StatusProtocolError, "protocol error")
	}
	close(c.readerDone)
}

func (c *Conn) readHeader() (header, error) {
	for {
		h, n, err := parseHeader(c.rd.buffered())
		if err != nil {
			return h, err
		}
		if n > 0 {
			c.rd.r += n
			return h, nil
		}
		if err := c.rd.fill(); err != nil {
			return h, err
		}
	}
}

// appendPayload appends the payload of h to msg, unmasked. The buffer
// grows as the payload arrives, never to the length the frame announces
// before the bytes are there: a peer that announces 1 MiB and sends 30
// bytes costs 30 bytes (and a pooled read buffer), not 1 MiB.
func (c *Conn) appendPayload(msg []byte, h header) ([]byte, error) {
	n := len(msg)
	for left := h.Length; left > 0; {
		avail := c.rd.buffered()
		if len(avail) == 0 && left >= readBufSize {
			// A large rest: read it straight into msg, which grows by
			// at most what this frame delivered so far (a read buffer
			// at first).
			grow := int(min(left, max(int64(len(msg)-n), readBufSize)))
			msg = slices.Grow(msg, grow)
			k, err := c.rd.nc.Read(msg[len(msg) : len(msg)+grow])
			msg = msg[:len(msg)+k]
			left -= int64(k)
			if err != nil && left > 0 {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return msg, err
			}
			continue
		}
		if len(avail) == 0 {
			if err := c.rd.fill(); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return msg, err
			}
			continue
		}
		k := min(int64(len(avail)), left)
		// append does not zero what it copies over, as make would, and
		// at most doubles what the message already holds.
		msg = append(msg, avail[:k]...)
		c.rd.r += int(k)
		left -= k
	}
	if h.Masked {
		ws.Cipher(msg[n:], h.Mask, 0)
	}
	return msg, nil
}

// readPayload reads the payload of h into p (len(p) == h.Length) and
// unmasks it.
func (c *Conn) readPayload(p []byte, h header) error {
	if err := c.rd.readFull(p); err != nil {
		return err
	}
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	return nil
}

// WriteMessage buffers one message as a single frame. It does not flush
// (unless a lot is buffered already): call Flush when there is nothing more
// to send right now.
func (c *Conn) WriteMessage(op Opcode, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wErr != nil {
		return c.wErr
	}
	if c.closeSent {
		return ErrClosed
	}
	return c.writeFrame(op, p)
}

// Buffered returns the number of bytes written but not flushed yet.
func (c *Conn) Buffered() int {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wbuf == nil {
		return 0
	}
	return len(*c.wbuf)
}

// Flush writes what is buffered.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

// noRaw marks a connection TryFlush found without a raw socket.
var noRaw = new(rawWriter)

// TryFlush writes what is buffered as far as the socket takes it without
// waiting, and reports whether nothing is left. What the socket did not
// take stays buffered, in order, for the next Flush. So a goroutine that
// must not block (the relay's reader, writing to another session) can
// write, and hand what is left to one that may. On a connection without a
// raw socket (TLS) it writes nothing and reports false. Server side only.
func (c *Conn) TryFlush() (bool, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wErr != nil {
		return false, c.wErr
	}
	if c.wbuf == nil {
		return true, nil
	}
	if c.raw == nil {
		// Not at creation: an idle connection does not pay for it.
		if !c.client {
			c.raw = newRawWriter(c.nc)
		}
		if c.raw == nil {
			c.raw = noRaw
		}
	}
	if c.raw == noRaw {
		return false, nil
	}
	b := *c.wbuf
	// A deadline left from an earlier flush may have passed, and RawConn
	// would refuse to write at all; this write does not wait anyway.
	c.nc.SetWriteDeadline(time.Time{})
	n, err := c.raw.write(b)
	if err != nil {
		return false, c.failWrite(err)
	}
	if n < len(b) {
		*c.wbuf = b[:copy(b, b[n:])]
		return false, nil
	}
	bp := c.wbuf
	c.wbuf = nil
	if cap(b) <= 4*writeBufSize {
		*bp = b[:0]
		writePool.Put(bp)
	}
	return true, nil
}

// Ping sends a ping frame; the peer's pong reaches Options.OnPong.
func (c *Conn) Ping() error { return c.writeControl(OpPing, nil) }

// writeControl writes a control frame and flushes.
func (c *Conn) writeControl(op Opcode, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wErr != nil {
		return c.wErr
	}
	if c.closeSent {
		return ErrClosed
	}
	if err := c.writeFrame(op, p); err != nil {
		return err
	}
	return c.flushLocked()
}

// writeFrame appends a final frame to the write buffer; c.wmu is held.
func (c *Conn) writeFrame(op Opcode, p []byte) error {
	if c.wErr != nil {
		return c.wErr
	}
	if c.wbuf == nil {
		c.wbuf = writePool.Get().(*[]byte)
	}
	b := *c.wbuf
	if !c.client && len(p) >= directWrite {
		b = appendHeader(b, op, len(p), false, [4]byte{})
		bufs := net.Buffers{b, p}
		*c.wbuf = b[:0]
		c.nc.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
		if _, err := bufs.WriteTo(c.nc); err != nil {
			return c.failWrite(err)
		}
		return nil
	}
	var key [4]byte
	if c.client {
		key = ws.NewMask()
	}
	b = appendHeader(b, op, len(p), c.client, key)
	start := len(b)
	b = append(b, p...)
	if c.client {
		ws.Cipher(b[start:], key, 0)
	}
	*c.wbuf = b
	if len(b) >= flushAt {
		return c.flushLocked()
	}
	return nil
}

// flushLocked writes the buffer and gives it back to the pool; c.wmu is
// held.
func (c *Conn) flushLocked() error {
	if c.wbuf == nil {
		return c.wErr
	}
	bp := c.wbuf
	c.wbuf = nil
	b := *bp
	var err error
	if len(b) > 0 && c.wErr == nil {
		c.nc.SetWriteDeadline(time.Now().Add(c.opts.WriteTimeout))
		_, err = c.nc.Write(b)
	}
	if cap(b) <= 4*writeBufSize {
		*bp = b[:0]
		writePool.Put(bp)
	}
	if err != nil {
		return c.failWrite(err)
	}
	return c.wErr
}

// failWrite ends writing with err and tears the connection down: after a
// failed write the stream is in an unknown state.
func (c *Conn) failWrite(err error) error {
	if c.wErr == nil {
		c.wErr = err
	}
	c.nc.Close()
	return c.wErr
}

// sendClose writes a close frame with code and reason, once.
func (c *Conn) sendClose(code StatusCode, reason string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closeSent {
		return nil
	}
	c.closeSent = true
	if len(reason) > 123 {
		reason = reason[:123]
	}
	var buf [ws.MaxControlFramePayloadSize]byte
	p := buf[:2+len(reason)]
	ws.PutCloseFrameBody(p, ws.StatusCode(code), reason)
	if err := c.writeFrame(OpClose, p); err != nil {
		return err
	}
	return c.flushLocked()
}

// Close runs the close handshake: it sends a close frame with code and
// reason, waits up to wait for the peer's close frame, and closes the
// connection. The peer's answer is read by the goroutine in ReadMessage;
// when there is none (or it has returned), Close reads it itself.
func (c *Conn) Close(code StatusCode, reason string, wait time.Duration) error {
	err := c.sendClose(code, reason)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.readerDone:
		if !c.closeRcvd && !c.closed.Load() {
			c.drainUntilClose(time.Now().Add(wait))
		}
	case <-t.C:
	}
	c.CloseNow()
	return err
}

// drainUntilClose reads and discards frames until the peer's close frame,
// the deadline, or an error. The reader has returned: we own it.
func (c *Conn) drainUntilClose(deadline time.Time) {
	c.nc.SetReadDeadline(deadline)
	if c.rd.discard(c.skip) != nil {
		return
	}
	c.skip = 0
	for {
		h, err := c.readHeader()
		if err != nil || c.rd.discard(h.Length) != nil || h.OpCode == OpClose {
			return
		}
	}
}

// CloseNow closes the connection without a close handshake.
func (c *Conn) CloseNow() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.nc.Close()
}
