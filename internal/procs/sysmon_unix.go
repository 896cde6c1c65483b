//go:build unix

package procs

import (
	"os"
	"syscall"
)

// reexec replaces the process's program with itself, GODEBUG set to
// godebug; it returns only when that failed.
func reexec(godebug string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, environ(godebug))
}
