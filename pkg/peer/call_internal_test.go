package peer

import (
	"regexp"
	"testing"
)

// TestNewUID checks the form of request uids (a version 4 UUID, as the
// reference peer makes them) and that they do not repeat.
func TestNewUID(t *testing.T) {
	form := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := make(map[string]bool)
	for range 10000 {
		u := newUID()
		if !form.MatchString(u) {
			t.Fatalf("uid %q is not a version 4 UUID", u)
		}
		if seen[u] {
			t.Fatalf("uid %q repeated", u)
		}
		seen[u] = true
	}
}
