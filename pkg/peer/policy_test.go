package peer

import "testing"

func TestPolicy(t *testing.T) {
	pol, err := ParsePolicy([]byte(`
default: deny
rules:
  - commands: ["calc.*"]
    allow: [41, "55"]
  - commands: ["admin.*"]
    deny: ["*"]
  - commands: ["pub.*", "rmb.version"]
    deny: [66]
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		twin uint32
		cmd  string
		want bool
	}{
		{41, "calc.add", true},
		{55, "calc.add", true},
		{66, "calc.add", false},
		{41, "admin.reset", false},
		{41, "pub.read", true},
		{66, "pub.read", false},
		{66, "rmb.version", false},
		{41, "rmb.version", true},
		{41, "other", false},
	}
	for _, tt := range tests {
		if got := pol.Allow(tt.twin, tt.cmd); got != tt.want {
			t.Errorf("Allow(%d, %q) = %v, want %v", tt.twin, tt.cmd, got, tt.want)
		}
	}
	var none *Policy
	if !none.Allow(1, "x") {
		t.Error("nil policy denies")
	}
	empty, err := ParsePolicy(nil)
	if err != nil || !empty.Allow(1, "x") {
		t.Errorf("empty policy: %v", err)
	}
	for _, bad := range []string{"default: maybe", "rules:\n  - allow: [1]", "rules:\n  - commands: [\"[\"]", "rules:\n  - commands: [x]\n    allow: [abc]", "rules: 5"} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestPolicyGlobs: '*' matches every character a command name may hold,
// '/' and '.' included, as a reader of the policy expects.
func TestPolicyGlobs(t *testing.T) {
	pol, err := ParsePolicy([]byte(`
default: allow
rules:
  - commands: ["admin.*"]
    deny: ["*"]
  - commands: ["*"]
    allow: [7]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		twin uint32
		cmd  string
		want bool
	}{
		{7, "admin.reset", false},
		{7, "admin.v2/reset", false},
		{7, "admin.users.delete", false},
		{7, "calc/add", true},
		{7, "a.b/c.d", true},
		{8, "calc/add", false}, // "*" matches it, and 8 is not in its allow list
		{8, "x", false},
	} {
		if got := pol.Allow(tt.twin, tt.cmd); got != tt.want {
			t.Errorf("Allow(%d, %q) = %v, want %v", tt.twin, tt.cmd, got, tt.want)
		}
	}
	if _, err := ParsePolicy([]byte("rules:\n  - commands: [\"a\\\\*\"]\n    deny: [1]")); err == nil {
		t.Error("a pattern with a backslash escape was accepted")
	}
}
