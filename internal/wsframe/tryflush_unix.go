//go:build unix

package wsframe

import (
	"net"
	"syscall"
)

// rawWriter writes through syscall.RawConn once, without waiting for the
// socket to become writable (TryFlush).
type rawWriter struct {
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // built once: no allocation per write
	b   []byte                // what fn writes
	n   int
	err error
}

// newRawWriter returns a rawWriter for nc, or nil when nc has no raw
// socket.
func newRawWriter(nc net.Conn) *rawWriter {
	rc := rawConn(nc)
	if rc == nil {
		return nil
	}
	rw := &rawWriter{rc: rc}
	rw.fn = func(fd uintptr) bool {
		for {
			n, err := syscall.Write(int(fd), rw.b)
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.EAGAIN {
				n, err = 0, nil
			}
			rw.n, rw.err = max(n, 0), err
			return true // never wait for the socket
		}
	}
	return rw
}

// write writes as much of b as the socket takes now.
func (rw *rawWriter) write(b []byte) (int, error) {
	rw.b, rw.n, rw.err = b, 0, nil
	err := rw.rc.Write(rw.fn)
	rw.b = nil
	if err != nil {
		return 0, err
	}
	return rw.n, rw.err
}
