// Package fault kills and restarts the real RMB processes under a steady
// load of requests and proves that nothing vanishes: every request a bot
// pushed on msgbus.system.local ends as a response on its ret queue (an
// answer, or an error answer, dead-lettered where the peer gave up on it).
//
// TestMain builds cmd/registrar, cmd/relay and cmd/peer into a temporary
// directory; each test starts its own registrar, relays, redis-servers
// (AOF on) and two peers on free 127.0.0.1 ports, so the tests run in
// parallel. Peer A's bot pushes requests with unique ids to peer B's twin;
// an echo service behind peer B answers each and counts the ids it sees.
package fault

import (
	"fmt"
	"os"
	"testing"

	"github.com/rmb-go/rmb/test/harness"
)

var bins *harness.Bins

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rmb-fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = harness.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fault: cannot build the binaries or find redis-server:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
