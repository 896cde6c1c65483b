//go:build !unix

package bench

// RaiseFileLimit does nothing here.
func RaiseFileLimit(want uint64) {}
