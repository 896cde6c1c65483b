//go:build !unix

package wsframe

import "net"

// rawReader is not available here: the reader keeps its buffer.
type rawReader struct{}

func (rr *rawReader) init(*reader, net.Conn) {}
func (rr *rawReader) ok() bool               { return false }
func (rr *rawReader) fill() error            { return nil }
