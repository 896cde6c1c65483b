//go:build !unix

package wsframe

import "net"

// rawWriter is not available here: TryFlush writes nothing.
type rawWriter struct{}

func newRawWriter(net.Conn) *rawWriter            { return nil }
func (rw *rawWriter) write(b []byte) (int, error) { return 0, nil }
