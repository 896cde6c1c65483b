//go:build !unix

package wsframe

import "net"

// rawWriter is not available here: TryFlush writes nothing.
type rawWriter struct{}

func (rw *rawWriter) init(net.Conn)               {}
func (rw *rawWriter) ok() bool                    { return false }
func (rw *rawWriter) write(b []byte) (int, error) { return 0, nil }
