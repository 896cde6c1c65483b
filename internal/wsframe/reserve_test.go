package wsframe

import (
	"net"
	"runtime"
	"testing"
)

// TestAnnouncedLengthNotReserved: frames that announce 1 MiB and send a few
// bytes cost what they sent, not what they announced.
func TestAnnouncedLengthNotReserved(t *testing.T) {
	const conns = 64
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	done := make(chan error, conns)
	var clients []net.Conn
	for range conns {
		srv, cli := net.Pipe()
		clients = append(clients, cli)
		c := newConn(srv, false, nil, &Options{ReadLimit: 2 << 20})
		go func() {
			_, _, err := c.ReadMessage(nil)
			done <- err
		}()
		frame := appendHeader(nil, OpBinary, 1<<20, true, [4]byte{})
		// net.Pipe: a write returns once the reader took it all. The
		// second write is taken only by the read after the payload
		// buffer was made.
		cli.Write(append(frame, make([]byte, 30)...))
		cli.Write(make([]byte, 1))
	}
	grown := int64(heap()) - int64(before)
	for _, c := range clients {
		c.Close()
	}
	for range conns {
		if err := <-done; err == nil {
			t.Fatal("a truncated frame was read as a message")
		}
	}
	t.Logf("%d frames announcing 1 MiB, 31 bytes sent: heap grew %d KiB", conns, grown>>10)
	if grown > 8<<20 {
		t.Fatalf("heap grew %d MiB: the announced lengths were reserved", grown>>20)
	}
}
