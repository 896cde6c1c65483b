// Package hostile feeds the real relay, peer and registrar (built from
// cmd/ in TestMain) with forged, replayed, expired, oversized, truncated
// and malformed input, and with clients that misbehave at the connection
// level, and checks that each is refused the documented way while honest
// traffic keeps flowing and memory stays bounded.
package hostile

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/rmb-go/rmb/test/harness"
)

var bins *harness.Bins

func TestMain(m *testing.M) {
	// TestIdleConnections opens 10,000 sockets; the relay (a child
	// process) inherits the raised limit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	dir, err := os.MkdirTemp("", "rmb-hostile-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = harness.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile: cannot build the binaries or find redis-server:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
