//go:build unix

package wsframe

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawReader reads through syscall.RawConn so that the read buffer is taken
// from the pool only once the socket is readable: the callback runs when
// the poller says so, takes a buffer, reads, and gives the buffer back when
// the read would block.
type rawReader struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // built once: no allocation per read
	n    int
	err  error
	held *reader
}

// rawConn returns nc's raw socket, or nil when it has none (TLS, pipes).
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func (rr *rawReader) init(rd *reader, nc net.Conn) {
	rc := rawConn(nc)
	if rc == nil {
		return
	}
	rr.rc, rr.held = rc, rd
	rr.fn = func(fd uintptr) bool {
		if rd.bufp == nil {
			rd.acquire()
		}
		for {
			n, err := syscall.Read(int(fd), rd.buf[rd.w:])
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				rd.release()
				return false
			}
			rr.n, rr.err = n, err
			return true
		}
	}
}

func (rr *rawReader) ok() bool { return rr.rc != nil }

func (rr *rawReader) fill() error {
	rr.n, rr.err = 0, nil
	if err := rr.held.rawRead(rr); err != nil {
		return err
	}
	switch {
	case rr.err != nil:
		return os.NewSyscallError("read", rr.err)
	case rr.n <= 0:
		return io.EOF
	}
	rr.held.w += rr.n
	return nil
}

func (rd *reader) rawRead(rr *rawReader) error { return rr.rc.Read(rr.fn) }
