package wsframe

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// streamConn is a net.Conn that reads from a byte stream and discards what
// is written.
type streamConn struct {
	r io.Reader
	w bytes.Buffer
}

func (c *streamConn) Read(p []byte) (int, error)        { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)       { return c.w.Write(p) }
func (c *streamConn) Close() error                      { return nil }
func (c *streamConn) LocalAddr() net.Addr               { return &net.TCPAddr{} }
func (c *streamConn) RemoteAddr() net.Addr              { return &net.TCPAddr{} }
func (c *streamConn) SetDeadline(time.Time) error       { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error   { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error  { return nil }
func (c *streamConn) setReader(r io.Reader) *streamConn { c.r = r; return c }

// clientFrames builds masked frames as a client sends them.
func clientFrames(msgs ...[]byte) []byte {
	sc := &streamConn{}
	c := newConn(sc, true, nil, nil)
	for _, m := range msgs {
		c.WriteMessage(OpBinary, m)
	}
	c.Flush()
	return sc.w.Bytes()
}

// FuzzReadMessage feeds arbitrary bytes to the server-side reader, in
// chunks of every size: it must never panic, never return a message over
// the limit, and return the same messages however the bytes are split.
func FuzzReadMessage(f *testing.F) {
	f.Add(clientFrames([]byte("hello"), make([]byte, 200), make([]byte, 70000)), uint8(1))
	f.Add([]byte{0x02, 0x81, 1, 2, 3, 4, 'a', 0x80, 0x81, 1, 2, 3, 4, 'b'}, uint8(3))
	f.Add([]byte{0x89, 0x80, 0, 0, 0, 0, 0x82, 0x80, 0, 0, 0, 0}, uint8(2))
	f.Add([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}, uint8(7))
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint8(5))
	const limit = 1 << 16
	read := func(b []byte, chunk int) (msgs [][]byte, err error) {
		var r io.Reader = bytes.NewReader(b)
		if chunk > 0 {
			r = &chunkReader{b: b, n: chunk}
		}
		c := newConn(new(streamConn).setReader(r), false, nil, &Options{ReadLimit: limit})
		for {
			_, m, err := c.ReadMessage(nil)
			if err != nil {
				return msgs, err
			}
			if len(m) > limit {
				panic("message over the limit")
			}
			msgs = append(msgs, m)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		whole, err1 := read(b, 0)
		split, err2 := read(b, int(chunk%16)+1)
		if len(whole) != len(split) {
			t.Fatalf("%d messages whole, %d split", len(whole), len(split))
		}
		for i := range whole {
			if !bytes.Equal(whole[i], split[i]) {
				t.Fatalf("message %d differs", i)
			}
		}
		if (err1 == io.EOF) != (err2 == io.EOF) || errors.Is(err1, ErrMessageTooBig) != errors.Is(err2, ErrMessageTooBig) {
			t.Fatalf("errors differ: %v / %v", err1, err2)
		}
	})
}

type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// loopReader repeats b forever.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.b[r.off:])
		n += k
		r.off = (r.off + k) % len(r.b)
	}
	return n, nil
}

// TestHotPathAllocs: reading a message allocates only the message the
// caller keeps (nothing when it passes a buffer), and buffering a frame and
// flushing allocates nothing.
func TestHotPathAllocs(t *testing.T) {
	frames := clientFrames(make([]byte, 400))
	c := newConn(new(streamConn).setReader(&loopReader{b: frames}), false, nil, nil)
	if n := testing.AllocsPerRun(1000, func() { c.ReadMessage(nil) }); n > 1 {
		t.Errorf("ReadMessage(nil): %.1f allocations, want 1", n)
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(1000, func() { c.ReadMessage(buf) }); n > 0 {
		t.Errorf("ReadMessage(buf): %.1f allocations, want 0", n)
	}
	sc := &streamConn{}
	w := newConn(sc, false, nil, nil)
	msg := make([]byte, 400)
	if n := testing.AllocsPerRun(1000, func() {
		for range 10 {
			w.WriteMessage(OpBinary, msg)
		}
		w.Flush()
		sc.w.Reset()
	}); n > 0 {
		t.Errorf("WriteMessage+Flush: %.1f allocations, want 0", n)
	}
}
