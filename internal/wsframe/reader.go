package wsframe

import (
	"io"
	"net"
)

// reader is a buffered reader over the connection whose buffer comes from
// readPool. With a raw connection (see reader_unix.go) the buffer is taken
// only while the socket has data and given back when it runs dry, so an
// idle connection holds none.
type reader struct {
	nc   net.Conn
	bufp *[]byte // nil when no buffer is held
	buf  []byte  // *bufp, or nil
	r, w int     // buf[r:w] is unread
	raw  rawReader
}

func (rd *reader) init(nc net.Conn, buffered []byte) {
	rd.nc = nc
	rd.raw.init(rd, nc)
	if len(buffered) > 0 {
		rd.acquire()
		if len(buffered) > len(rd.buf) {
			rd.buf = make([]byte, len(buffered))
		}
		rd.w = copy(rd.buf, buffered)
	}
}

func (rd *reader) acquire() {
	rd.bufp = readPool.Get().(*[]byte)
	rd.buf = *rd.bufp
	rd.r, rd.w = 0, 0
}

// release gives the buffer back; only when nothing is unread.
func (rd *reader) release() {
	if rd.bufp != nil && rd.r == rd.w {
		readPool.Put(rd.bufp)
		rd.bufp, rd.buf = nil, nil
		rd.r, rd.w = 0, 0
	}
}

func (rd *reader) buffered() []byte { return rd.buf[rd.r:rd.w] }

// fill reads at least one more byte into the buffer.
func (rd *reader) fill() error {
	if rd.r == rd.w {
		rd.r, rd.w = 0, 0
	} else if rd.r > 0 {
		rd.w = copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r = 0
	}
	if rd.raw.ok() {
		return rd.raw.fill()
	}
	if rd.bufp == nil {
		rd.acquire()
	}
	for {
		n, err := rd.nc.Read(rd.buf[rd.w:])
		rd.w += n
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readFull fills p, from the buffer first, then from the connection
// (directly when what is left is at least a buffer's size).
func (rd *reader) readFull(p []byte) error {
	n := copy(p, rd.buffered())
	rd.r += n
	p = p[n:]
	for len(p) > 0 {
		if len(p) >= readBufSize {
			_, err := io.ReadFull(rd.nc, p)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if err := rd.fill(); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		n := copy(p, rd.buffered())
		rd.r += n
		p = p[n:]
	}
	return nil
}

// discard skips n bytes.
func (rd *reader) discard(n int64) error {
	for n > 0 {
		if rd.r == rd.w {
			if err := rd.fill(); err != nil {
				return err
			}
		}
		k := min(n, int64(rd.w-rd.r))
		rd.r += int(k)
		n -= k
	}
	return nil
}
