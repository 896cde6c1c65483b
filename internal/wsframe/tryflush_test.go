package wsframe

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TryFlush writes what the socket takes and keeps the rest, in order: a
// client that stops reading fills the socket, TryFlush then reports false
// without waiting, and once the client reads again a Flush delivers every
// message whole and in order.
func TestTryFlush(t *testing.T) {
	u, conns := serveOne(t, nil)
	c, err := Dial(ctx(t), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	s := <-conns
	if ok, err := s.TryFlush(); !ok || err != nil {
		t.Fatalf("TryFlush with nothing buffered: %v %v", ok, err)
	}
	msg := func(i int) []byte {
		b := bytes.Repeat([]byte{byte(i)}, 3000)
		binary.BigEndian.PutUint32(b, uint32(i))
		return b
	}
	// The client reads nothing yet: sooner or later the socket is full.
	n := 0
	for ; ; n++ {
		if n > 100000 {
			t.Fatal("TryFlush never found the socket full")
		}
		if err := s.WriteMessage(OpBinary, msg(n)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		ok, err := s.TryFlush()
		if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("TryFlush waited for the socket")
		}
		if !ok {
			break
		}
	}
	if s.Buffered() == 0 {
		t.Fatal("TryFlush reported bytes left, Buffered reports none")
	}
	// Another TryFlush on a full socket changes nothing.
	left := s.Buffered()
	if ok, err := s.TryFlush(); ok || err != nil || s.Buffered() > left {
		t.Fatalf("second TryFlush: %v %v, %d then %d bytes buffered", ok, err, left, s.Buffered())
	}
	got := make(chan error, 1)
	go func() {
		for i := 0; i <= n; i++ {
			_, b, err := c.ReadMessage(nil)
			if err != nil {
				got <- err
				return
			}
			if !bytes.Equal(b, msg(i)) {
				got <- fmt.Errorf("message %d: got %d bytes starting %x", i, len(b), b[:min(8, len(b))])
				return
			}
		}
		got <- nil
	}()
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("client did not get every message")
	}
	// A connection that is gone: TryFlush reports the error.
	s.CloseNow()
	s.WriteMessage(OpBinary, msg(0))
	if ok, err := s.TryFlush(); ok || err == nil {
		t.Fatalf("TryFlush after CloseNow: %v %v", ok, err)
	}
}

// Without a raw socket (here a pipe; TLS alike) TryFlush writes nothing
// and leaves the buffer to Flush.
func TestTryFlushNoRawSocket(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	s := newConn(a, false, nil, nil)
	if err := s.WriteMessage(OpBinary, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.TryFlush(); ok || err != nil {
		t.Fatalf("TryFlush on a pipe: %v %v", ok, err)
	}
	if s.Buffered() != 7 {
		t.Fatalf("%d bytes buffered, want 7", s.Buffered())
	}
	go s.Flush()
	buf := make([]byte, 7)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(b, buf); err != nil || string(buf[2:]) != "hello" {
		t.Fatalf("read %q: %v", buf, err)
	}
}

// MessageBuffered is true only when the next message is in the buffer
// whole, as one final data frame.
func TestMessageBuffered(t *testing.T) {
	frame := func(op Opcode, fin bool, p []byte) []byte {
		var key [4]byte
		b := appendHeader(nil, op, len(p), true, key)
		if !fin {
			b[0] &^= 0x80
		}
		return append(b, p...)
	}
	whole := frame(OpBinary, true, []byte("hello"))
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"empty", nil, false},
		{"one byte of a header", whole[:1], false},
		{"header only", whole[:6], false},
		{"all but the last byte", whole[:len(whole)-1], false},
		{"whole", whole, true},
		{"whole and part of the next", append(append([]byte(nil), whole...), whole[:3]...), true},
		{"first fragment", frame(OpBinary, false, []byte("he")), false},
		{"ping first", append(frame(OpPing, true, nil), whole...), false},
		// A 64-bit length with the top bit set: ReadMessage will refuse it.
		{"bad length", []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, false},
	} {
		a, b := net.Pipe()
		c := newConn(a, false, tc.in, nil)
		if got := c.MessageBuffered(); got != tc.want {
			t.Errorf("%s: MessageBuffered = %v, want %v", tc.name, got, tc.want)
		}
		a.Close()
		b.Close()
	}
}
