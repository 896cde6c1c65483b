package peer

import (
	"testing"

	"github.com/rmb-go/rmb/pkg/envelope"
)

// TestSeenKey: every field of an envelope's identity changes its
// duplicate-filter key, and no split of uid and session into the same
// bytes gives the same key.
func TestSeenKey(t *testing.T) {
	base := newSeenKey("ab", address{twin: 7, sid: "c"}, envelope.KindRequest)
	if again := newSeenKey("ab", address{twin: 7, sid: "c"}, envelope.KindRequest); again != base {
		t.Fatal("the same envelope identity gave two keys")
	}
	for name, k := range map[string]seenKey{
		"uid":        newSeenKey("ax", address{twin: 7, sid: "c"}, envelope.KindRequest),
		"twin":       newSeenKey("ab", address{twin: 8, sid: "c"}, envelope.KindRequest),
		"session":    newSeenKey("ab", address{twin: 7, sid: "d"}, envelope.KindRequest),
		"no session": newSeenKey("ab", address{twin: 7}, envelope.KindRequest),
		"kind":       newSeenKey("ab", address{twin: 7, sid: "c"}, envelope.KindResponse),
		"split":      newSeenKey("a", address{twin: 7, sid: "bc"}, envelope.KindRequest),
		"all in uid": newSeenKey("abc", address{twin: 7}, envelope.KindRequest),
	} {
		if k == base {
			t.Errorf("changing the %s kept the key", name)
		}
	}
}

func BenchmarkSeenKey(b *testing.B) {
	src := address{twin: 42, sid: "session-1"}
	for b.Loop() {
		newSeenKey("5f1c2a7e-9b3d-4c1e-8f2a-7d6e5c4b3a21", src, envelope.KindRequest)
	}
}
