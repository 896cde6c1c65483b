package wsframe

import (
	"testing"

	"github.com/gobwas/ws"
)

// The benchmarks below compare the parts of the frame codec that stay ours
// with gobwas/ws doing them, on a 256-byte masked client frame (the relay's
// typical envelope). docs/benchmarks.md records the figures.

func frame256() []byte {
	p := make([]byte, 256)
	for i := range p {
		p[i] = byte(i)
	}
	b := appendHeader(nil, OpBinary, len(p), true, [4]byte{1, 2, 3, 4})
	return append(b, p...)
}

// sliceReader reads a byte slice over and over, as the connection's
// buffer would be.
type sliceReader struct {
	b []byte
	r int
}

func (s *sliceReader) Read(p []byte) (int, error) {
	n := copy(p, s.b[s.r:])
	s.r += n
	return n, nil
}

func BenchmarkParseHeader(b *testing.B) {
	f := frame256()
	b.Run("wsframe", func(b *testing.B) {
		for b.Loop() {
			h, n, err := parseHeader(f)
			if err == nil {
				err = ws.CheckHeader(h, ws.StateServerSide)
			}
			if err != nil || n != 8 || h.Length != 256 {
				b.Fatal(h, n, err)
			}
		}
	})
	b.Run("gobwas", func(b *testing.B) {
		r := &sliceReader{b: f}
		scratch := make([]byte, ws.MaxHeaderSize)
		for b.Loop() {
			r.r = 0
			h, err := ws.ReadHeaderBuffer(r, scratch)
			if err == nil {
				err = ws.CheckHeader(h, ws.StateServerSide)
			}
			if err != nil || h.Length != 256 {
				b.Fatal(h, err)
			}
		}
	})
}

// appendWriter appends what is written to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func BenchmarkWriteHeader(b *testing.B) {
	b.Run("wsframe", func(b *testing.B) {
		buf := make([]byte, 0, 64)
		for b.Loop() {
			buf = appendHeader(buf[:0], OpBinary, 256, false, [4]byte{})
		}
	})
	b.Run("gobwas", func(b *testing.B) {
		w := &appendWriter{b: make([]byte, 0, 64)}
		scratch := make([]byte, ws.MaxHeaderSize)
		for b.Loop() {
			w.b = w.b[:0]
			ws.WriteHeaderBuffer(w, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 256}, scratch)
		}
	})
}
